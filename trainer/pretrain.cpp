#include "trainer/pretrain.h"

#include <chrono>
#include <optional>
#include <random>
#include <stdexcept>

#include "comm/tensor.h"
#include "storage/progress.h"
#include "storage/durable_file.h"
#include "storage/hdf5.h"
#include "trainer/error.h"
#include "trainer/model_inputs.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

namespace h5 = storage::h5;

void set_input_shape(ModelConfig& config, const storage::DatasetLayout& layout) {
  const auto& s = layout.feature_shape;
  const auto v = [](std::uint64_t x) { return static_cast<std::int64_t>(x); };
  if (s.size() == 2) {
    config.input_channels = 1, config.input_height = v(s[0]), config.input_width = v(s[1]);
  } else if (s.size() == 3) {
    config.input_channels = v(s[0]), config.input_height = v(s[1]), config.input_width = v(s[2]);
  } else if (s.size() == 1) {
    config.input_channels = 1, config.input_height = 1, config.input_width = v(s[0]);
  } else {
    throw std::invalid_argument("dataset records have " + std::to_string(s.size()) +
                                " dimensions; the models take 1 (D), 2 (HxW) or 3 (CxHxW)");
  }
}

RecordTensors read_records(const storage::Dataset& dataset, const std::vector<std::uint64_t>& rows,
                           const ModelConfig& config) {
  const auto& layout = dataset.layout();
  const auto n = static_cast<std::int64_t>(rows.size());
  std::vector<std::uint8_t> bytes(rows.size() * layout.bytes_per_record());
  dataset.read_features(rows, bytes);
  const auto values = static_cast<std::int64_t>(layout.values_per_record());
  if (values != config.input_channels * config.input_height * config.input_width) {
    throw std::invalid_argument(dataset.path().string() + ": records hold " + std::to_string(values) +
                                " values but the model expects " +
                                std::to_string(config.input_channels * config.input_height * config.input_width));
  }
  RecordTensors out;
  const auto dtype = layout.feature_type == storage::FeatureType::uint8 ? torch::kUInt8 : torch::kFloat32;
  out.inputs = to_model_inputs(torch::from_blob(bytes.data(), {n, values}, dtype), layout.feature_type, config);
  const auto labels = dataset.labels_of(rows);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= config.num_classes) {
      throw std::invalid_argument(dataset.path().string() + ": record '" + std::string(dataset.id(rows[i])) +
                                  "' has label " + std::to_string(labels[i]) + " outside [0, " +
                                  std::to_string(config.num_classes) + "); raise model.num_classes");
    }
  }
  out.labels = torch::tensor(std::vector<std::int64_t>(labels.begin(), labels.end()), torch::kInt64);
  return out;
}

namespace {

// One batch's gradient, the same bits for any rank count: the batch's rows are split in order into
// `parts` micro-batches; rank r computes micro-batches r, r + R, ... (slot k: micro-batch r + kR),
// one allgather gives every rank every micro-batch's flattened gradient, and each rank adds them
// in micro-batch order into the parameters' gradients. A slot ends with the micro-batch's loss.
class MicroBatchGradients {
 public:
  MicroBatchGradients(std::vector<torch::Tensor> params, int parts, comm::Communicator& comm, torch::Device device)
      : params_(std::move(params)), parts_(parts), comm_(comm) {
    std::int64_t width = 1;  // the loss
    for (const auto& p : params_) width += p.numel();
    const std::int64_t slots = (parts_ + comm_.size() - 1) / comm_.size();
    const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
    send_ = torch::zeros({slots, width}, options);
    recv_ = torch::zeros({comm_.size(), slots, width}, options);
  }

  // Sets every parameter's gradient to the batch's (the sum over micro-batches of what
  // `part_loss(begin, end, part)` back-propagates: the loss of rows [begin, end) of the batch, which
  // form micro-batch `part`) and returns the batch's summed loss. Empty micro-batches are skipped.
  template <typename PartLoss>
  double compute(std::int64_t rows, PartLoss&& part_loss) {
    send_.zero_();
    for (int part = comm_.rank(), slot = 0; part < parts_; part += comm_.size(), ++slot) {
      const auto begin = rows * part / parts_;
      const auto end = rows * (part + 1) / parts_;
      if (begin == end) continue;
      for (auto& p : params_) p.mutable_grad() = torch::Tensor();
      const auto loss = part_loss(begin, end, part);
      loss.backward();
      auto row = send_[slot];
      std::int64_t offset = 0;
      for (const auto& p : params_) {
        if (p.grad().defined()) row.narrow(0, offset, p.numel()).copy_(p.grad().reshape(-1));
        offset += p.numel();
      }
      row[offset].copy_(loss.detach().reshape({}));
    }
    comm::allgather(comm_, send_, recv_);
    auto sum = recv_[0][0].clone();
    for (int part = 1; part < parts_; ++part) sum += recv_[part % comm_.size()][part / comm_.size()];
    std::int64_t offset = 0;
    for (auto& p : params_) {
      p.mutable_grad() = sum.narrow(0, offset, p.numel()).view(p.sizes());
      offset += p.numel();
    }
    return sum[offset].item<double>();
  }

 private:
  std::vector<torch::Tensor> params_;
  int parts_;
  comm::Communicator& comm_;
  torch::Tensor send_, recv_;  // [slots, width], [ranks, slots, width]
};

}  // namespace

PretrainReport pretrain_backbone(LetheModel& model, const RecordTensors& data, const PretrainSettings& settings,
                                 std::uint64_t seed, comm::Communicator& comm) {
  const auto& options = settings.optimizer;
  if (settings.micro_batches < 1 || settings.micro_batches > options.batch_size) {
    throw std::invalid_argument("pretrain: micro_batches must lie in [1, batch_size]");
  }
  const auto start = std::chrono::steady_clock::now();
  model.set_active_depth(0);
  auto params = model.select_trainable_backbone();
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(options.learning_rate));
  const auto device = model.head_weight().device();
  // The frozen trunk (if any) runs once per record, not once per epoch.
  torch::Tensor inputs = data.inputs.to(device);
  if (model.config().trunk) {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> parts;
    for (std::int64_t s = 0; s < data.inputs.size(0); s += options.batch_size)
      parts.push_back(model.trunk_outputs(data.inputs.slice(0, s, std::min(data.inputs.size(0), s + options.batch_size)).to(device)));
    if (!parts.empty()) inputs = torch::cat(parts, 0);
  }
  const auto labels = data.labels.to(device);
  const auto n = inputs.size(0);
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
  PretrainReport report;
  report.records = n;
  const std::int64_t batches_per_epoch = (n + options.batch_size - 1) / options.batch_size;
  storage::ProgressTask progress("pretrain", batches_per_epoch * options.epochs, "batches");
  MicroBatchGradients gradients(params, settings.micro_batches, comm, device);
  for (int epoch = 0; epoch < options.epochs; ++epoch) {
    std::mt19937_64 engine(mix_seed(seed, 3, static_cast<std::uint64_t>(epoch)));
    for (std::size_t k = order.size(); k > 1; --k) std::swap(order[k - 1], order[static_cast<std::size_t>(engine() % k)]);
    const auto all = torch::tensor(order, torch::kInt64).to(device);
    double loss_sum = 0;
    std::int64_t batches = 0;
    for (std::int64_t s = 0; s < n; s += options.batch_size) {
      const auto index = all.slice(0, s, std::min(n, s + options.batch_size));
      const auto rows = index.size(0);
      const auto batch_seed = mix_seed(seed, 4, static_cast<std::uint64_t>(epoch), static_cast<std::uint64_t>(batches));
      // Dropout masks per micro-batch, from its own seed: whichever rank computes it draws the same.
      loss_sum += gradients.compute(rows, [&](std::int64_t begin, std::int64_t end, int part) {
        auto masks = make_cpu_generator(mix_seed(batch_seed, static_cast<std::uint64_t>(part)));
        const auto rows_index = index.slice(0, begin, end);
        const auto logits = model.forward_after_trunk(inputs.index_select(0, rows_index), settings.dropout, &masks);
        return torch::cross_entropy_loss(logits, labels.index_select(0, rows_index), {}, at::Reduction::Sum) /
               static_cast<double>(rows);
      });
      optimizer.step();
      ++batches;
      progress.advance(1);
    }
    report.final_loss = batches ? loss_sum / static_cast<double>(batches) : 0.0;
  }
  model.freeze_all();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

void set_feature_mean(LetheModel& model, const torch::Tensor& inputs, std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const int depth = model.active_depth();
  model.set_active_depth(0);
  const auto device = model.head_weight().device();
  auto sum = torch::zeros({feature_dim(model.config())}, torch::kFloat64);
  for (std::int64_t start = 0; start < inputs.size(0); start += batch_size) {
    const auto batch = inputs.slice(0, start, std::min(inputs.size(0), start + batch_size)).to(device);
    sum += model.features(batch).to(torch::kCPU).to(torch::kFloat64).sum(0);
  }
  model.set_active_depth(depth);
  model.set_feature_mean(inputs.size(0) > 0 ? sum / static_cast<double>(inputs.size(0)) : sum);
}

namespace {

std::string dataset_name(const std::string& tensor_name) {
  std::string name = tensor_name;  // "blocks.0.weight" -> "blocks/0/weight"
  for (auto& ch : name) {
    if (ch == '.') ch = '/';
  }
  return name;
}

// H5Lexists on "a/b/c" fails unless "a" and "a/b" exist, so test each component in turn.
bool link_exists(hid_t file, const std::string& path) {
  for (std::size_t end = path.find('/'); ; end = path.find('/', end + 1)) {
    const auto prefix = path.substr(0, end);
    if (H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (end == std::string::npos) return true;
  }
}

}  // namespace

void save_backbone(LetheModel& model, const std::filesystem::path& path, const nlohmann::json& metadata) {
  h5::silence_error_printing();
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  const auto tmp = storage::temp_path_for(path);
  // A failed write (a full disk) must not leave the half-written temporary behind, taking the space.
  struct RemoveUnlessCommitted {
    const std::filesystem::path& file;
    bool committed = false;
    ~RemoveUnlessCommitted() {
      std::error_code ignored;
      if (!committed) std::filesystem::remove(file, ignored);
    }
  } cleanup{tmp};
  {
    auto file = h5::create_file(tmp.string());
    h5::write_string_attribute(file.get(), "lethe_format", "lethe-backbone");
    h5::write_string_attribute(file.get(), "model", to_json(model.config()).dump());
    h5::write_string_attribute(file.get(), "metadata", metadata.dump());
    h5::PropList lcpl(H5Pcreate(H5P_LINK_CREATE));
    h5::check(H5Pset_create_intermediate_group(lcpl.get(), 1), "backbone " + tmp.string());
    for (auto& [name, tensor] : model.backbone_and_head_tensors()) {
      const auto data = tensor.detach().to(torch::kCPU).to(torch::kFloat32).contiguous();
      std::vector<hsize_t> dims(data.sizes().begin(), data.sizes().end());
      h5::Dataspace space(h5::check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                                    "backbone dataspace " + name));
      const auto where = "writing '" + dataset_name(name) + "' in " + tmp.string();
      h5::Dataset dataset(h5::check(H5Dcreate2(file.get(), dataset_name(name).c_str(), H5T_IEEE_F32LE, space.get(),
                                               lcpl.get(), H5P_DEFAULT, H5P_DEFAULT),
                                    where));
      h5::check(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data_ptr<float>()), where);
    }
    h5::check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "flushing " + tmp.string());
  }
  storage::commit_file(tmp, path);
  cleanup.committed = true;
}

namespace {

// A backbone written by `lethe pretrain` names the trunk its blocks were trained on (model JSON):
// blocks trained on another trunk's features, or on the records themselves, would load without a
// shape error and predict garbage. Files exported from elsewhere name none and are taken as they are.
void check_backbone_trunk(hid_t file, const ModelConfig& config, const std::filesystem::path& path) {
  if (!h5::has_attribute(file, "model")) return;
  std::optional<TrunkSpec> trained;
  try {
    trained = model_config_from_json(nlohmann::json::parse(h5::read_string_attribute(file, "model"))).trunk;
  } catch (const std::exception&) {
    return;  // not a Lethe model description: the shape checks below decide
  }
  const auto sha = [](const std::optional<TrunkSpec>& t) { return t ? t->sha256.substr(0, 16) + "…" : std::string("none"); };
  if (trained.has_value() != config.trunk.has_value() || (trained && trained->sha256 != config.trunk->sha256)) {
    throw TrainerError(ErrorKind::kMismatch, "backbone file " + path.string() + " was pretrained on trunk " + sha(trained) +
                                                 " (SHA-256), but the config's model.trunk is " + sha(config.trunk) +
                                                 ": its blocks expect the other trunk's features. Pretrain again for "
                                                 "this trunk (`lethe pretrain --config ... --force`)");
  }
}

}  // namespace

void load_backbone(LetheModel& model, const std::filesystem::path& path) {
  h5::silence_error_printing();
  if (!std::filesystem::exists(path)) {
    throw storage::StorageError("backbone file " + path.string() +
                                " does not exist; run `lethe pretrain --config ...` first or fix `backbone:`");
  }
  auto file = h5::open_file(path.string(), false);
  check_backbone_trunk(file.get(), model.config(), path);
  std::vector<std::pair<torch::Tensor*, torch::Tensor>> loaded;
  auto tensors = model.backbone_and_head_tensors();
  for (auto& [name, target] : tensors) {
    const auto dname = dataset_name(name);
    // The feature mean is optional (backbones exported from elsewhere): zeros, i.e. no centring.
    if (name == "features.mean" && !link_exists(file.get(), dname)) {
      loaded.emplace_back(&target, torch::zeros_like(target));
      continue;
    }
    if (!link_exists(file.get(), dname)) {
      throw storage::StorageError("backbone file " + path.string() + " has no dataset '" + dname + "' (the model config has " +
                                  std::to_string(model.num_blocks()) + " blocks); see docs/BACKBONE.md for the layout");
    }
    const auto where = "reading '" + dname + "' in backbone file " + path.string();
    h5::Dataset dataset(h5::check(H5Dopen2(file.get(), dname.c_str(), H5P_DEFAULT), where));
    h5::Dataspace space(h5::check(H5Dget_space(dataset.get()), where));
    const int rank = h5::check(H5Sget_simple_extent_ndims(space.get()), where);
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    h5::check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr), where);
    std::vector<std::int64_t> shape(dims.begin(), dims.end());
    if (shape != target.sizes().vec()) {
      throw storage::StorageError("backbone file " + path.string() + ": '" + dname + "' has shape " +
                                  c10::str(at::IntArrayRef(shape)) + " but the model config (architecture " +
                                  to_string(model.config().architecture) + ", widths, input shape, num_classes) expects " +
                                  c10::str(target.sizes()) + "; pretrain a backbone for this config or fix model:");
    }
    h5::Datatype type(h5::check(H5Dget_type(dataset.get()), where));
    if (H5Tget_class(type.get()) != H5T_FLOAT) throw storage::StorageError(where + ": expected floating-point values");
    auto values = torch::empty(shape, torch::kFloat32);
    h5::check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data_ptr<float>()), where);
    loaded.emplace_back(&target, values);
  }
  // The file has extra blocks: the config would silently use a truncated backbone.
  const auto extra = "blocks/" + std::to_string(model.num_blocks());
  if (link_exists(file.get(), extra)) {
    throw storage::StorageError("backbone file " + path.string() + " has more blocks than model.widths lists (" +
                                std::to_string(model.num_blocks()) + "); fix model.widths");
  }
  torch::NoGradGuard no_grad;
  for (auto& [target, values] : loaded) target->copy_(values.to(target->device()));
}

}  // namespace lethe::trainer
