#include "trainer/noisy_gd.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <span>
#include <utility>
#include <vector>

#include "storage/progress.h"
#include "trainer/noisy_gd_kernel.h"

namespace lethe::trainer {
namespace {

constexpr const char* kCheckpointKind = "noisy_gd_softmax";

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in (0, 1]: never 0, so log() in Box-Muller is finite.
double unit_interval(std::uint64_t bits) { return static_cast<double>((bits >> 11) + 1) * 0x1.0p-53; }

// Normalized features lie in [-1, 1]; this leaves room for the last bit of a division's rounding.
constexpr double kFeatureBound = 1.0 + 1e-12;

// The most records a gradient sums (see fixed_point_bits).
constexpr std::int64_t kMaxRecords = std::int64_t{1} << 32;

// Bits after the binary point of the fixed-point tile sums. A tile holds at most 256 rows, each
// contributing s x_j r_c with |x_j| <= 1 + 1e-12, |r_c| <= 1 (p - e_y) and the clip scale s <= 1,
// so every entry of a tile's X^T R is below 257 in magnitude (float rounding included), and
// 257 * 2^42 < 2^51: the rounding to an integer is exact (see noisy_gd_kernel.cpp). Summed over
// all tiles of all ranks (at most n tiles, each off by at most 1/2 from its scaled value):
// |sum| <= 2^bits n (1 + 2e-12) + n / 2 < 2^63 when bits <= 62 - ceil(log2 n). So 42 bits (a
// tile's error at most 2^-43, and so the mean's) up to n = 2^20, one fewer per doubling of n, 30
// bits at the largest n allowed (2^32). Every partial sum of these integers, in any order, is
// bounded the same way: the int64 sums never overflow and are exact.
int fixed_point_bits(std::int64_t n) {
  int log2_n = 0;
  while ((std::int64_t{1} << log2_n) < n) ++log2_n;
  return std::min(42, 62 - log2_n);
}
static_assert(kNoisyGdTileRows == detail::kMaxTileRows, "the fixed-point bound counts on tiles of at most 256 rows");

nlohmann::json finite_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

}  // namespace

nlohmann::json params_json(const NoisyGdParams& p) {
  return {{"lambda", p.lambda}, {"eta", p.eta}, {"sigma", p.sigma}, {"clip", p.clip}, {"beta", p.beta}};
}

NoisyGdParams params_from_json(const nlohmann::json& p) {
  return {p.at("lambda").get<double>(), p.at("eta").get<double>(), p.at("sigma").get<double>(), p.at("clip").get<double>(),
          p.at("beta").get<double>()};
}

at::Tensor normalize_features(const at::Tensor& features) {
  if (features.dim() != 2 || !features.is_floating_point())
    throw NoisyGdError("normalize_features: expected a 2-d floating tensor (rows, d), got " +
                       std::to_string(features.dim()) + " dimensions of " + std::string(features.dtype().name()));
  const at::Tensor x = features.to(torch::kFloat64);
  const at::Tensor with_bias = torch::cat({x, torch::ones({x.size(0), 1}, x.options())}, 1);
  return with_bias / with_bias.norm(2, {1}, /*keepdim=*/true);  // norm >= 1: never divides by 0
}

at::Tensor step_noise(std::uint64_t seed, std::int64_t step, std::int64_t rows, std::int64_t cols) {
  if (rows < 0 || cols < 0 || step < 0)
    throw NoisyGdError("step_noise: rows, cols and step must be >= 0, got " + std::to_string(rows) + ", " +
                       std::to_string(cols) + ", " + std::to_string(step));
  at::Tensor noise = torch::empty({rows, cols}, torch::kFloat64);
  double* out = noise.data_ptr<double>();
  const std::int64_t count = rows * cols;
  // One independent splitmix64 stream per (seed, step), indexed by the element pair.
  const std::uint64_t base = splitmix64(seed ^ splitmix64(static_cast<std::uint64_t>(step) + 0x5851f42d4c957f2dULL));
  for (std::int64_t pair = 0; 2 * pair < count; ++pair) {
    const double u1 = unit_interval(splitmix64(base + 2 * static_cast<std::uint64_t>(pair)));
    const double u2 = unit_interval(splitmix64(base + 2 * static_cast<std::uint64_t>(pair) + 1));
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    out[2 * pair] = radius * std::cos(angle);
    if (2 * pair + 1 < count) out[2 * pair + 1] = radius * std::sin(angle);
  }
  return noise;
}

nlohmann::json to_json(const DeletionReceipt& r) {
  return {
      {"route", r.retrained ? "retrain" : "noisy_steps"},
      {"deleted", r.deleted},
      {"n_before", r.n_before},
      {"n_after", r.n_after},
      {"unlearning_steps", r.unlearning_steps},
      {"steps_run", r.steps_run},
      {"retrained", r.retrained},
      {"epsilon", r.epsilon},
      {"delta", r.delta},
      {"alpha", finite_or_null(r.alpha)},
      {"z", r.z},
      {"dp_epsilon", r.dp_epsilon},
      {"assumptions", [&] {
         nlohmann::json a = params_json(r.assumptions);
         a["M"] = r.gradient_bound;
         a["n"] = r.n_after;
         return a;
       }()},
      {"certified", r.certified},
      {"wall_seconds", r.wall_seconds},
  };
}

NoisyGdModel::NoisyGdModel(NoisyGdConfig config, comm::Communicator& comm)
    : config_(std::move(config)), comm_(&comm) {
  validate(config_.settings.params);
  if (config_.num_features < 1 || config_.num_classes < 2)
    throw NoisyGdError("noisy GD: needs num_features >= 1 and num_classes >= 2, got " +
                       std::to_string(config_.num_features) + " and " + std::to_string(config_.num_classes));
  if (config_.settings.train_steps < 1)
    throw NoisyGdError("noisy GD: train_steps = " + std::to_string(config_.settings.train_steps) + " must be >= 1");
  if (!(config_.settings.target_epsilon > 0.0) || !std::isfinite(config_.settings.target_epsilon))
    throw AccountantError("accountant: target epsilon = " + std::to_string(config_.settings.target_epsilon) + " must be > 0");
  weights_ = torch::zeros({config_.num_features, config_.num_classes}, torch::kFloat64);
}

const Accountant& NoisyGdModel::accountant() const {
  if (!accountant_) throw NoisyGdError("noisy GD: the model has not been trained yet: call train() first");
  return *accountant_;
}

void NoisyGdModel::check_features(const at::Tensor& features, const char* what) const {
  const std::string where = std::string("noisy GD ") + what + " on rank " + std::to_string(comm_->rank()) + ": ";
  if (!features.defined() || features.dim() != 2 || features.size(1) != config_.num_features ||
      features.scalar_type() != torch::kFloat64)
    throw NoisyGdError(where + "features must be float64 (rows, " + std::to_string(config_.num_features) +
                       ") from normalize_features()" +
                       (features.defined() ? ", got " + std::to_string(features.dim()) + "-d " +
                                                 std::string(features.dtype().name())
                                           : std::string(", got none")));
}

void NoisyGdModel::check_data(const LocalData& data, const char* what) const {
  check_features(data.features, what);
  const std::string where = std::string("noisy GD ") + what + " on rank " + std::to_string(comm_->rank()) + ": ";
  if (!data.labels.defined()) throw NoisyGdError(where + "labels missing");
  if (data.labels.dim() != 1 || data.labels.size(0) != data.features.size(0) ||
      data.labels.scalar_type() != torch::kInt64)
    throw NoisyGdError(where + "labels must be int64 with one entry per feature row (" +
                       std::to_string(data.features.size(0)) + ")");
  std::int64_t previous = 0;
  for (const std::int64_t end : data.block_ends) {
    if (end <= previous || end > data.labels.size(0))
      throw NoisyGdError(where + "block_ends must increase strictly from above 0 to the rows (" +
                         std::to_string(data.labels.size(0)) + "), got " + std::to_string(end) + " after " +
                         std::to_string(previous));
    previous = end;
  }
  if (!data.block_ends.empty() && previous != data.labels.size(0))
    throw NoisyGdError(where + "the last block must end at the last row (" + std::to_string(data.labels.size(0)) +
                       "), got " + std::to_string(previous));
  if (data.labels.numel() > 0 &&
      (data.labels.min().item<std::int64_t>() < 0 || data.labels.max().item<std::int64_t>() >= config_.num_classes))
    throw NoisyGdError(where + "labels must lie in [0, " + std::to_string(config_.num_classes) + ")");
}

std::int64_t NoisyGdModel::global_count(const LocalData& data) {
  std::int64_t count = data.labels.numel();
  comm_->allreduce({&count, 1, comm::DataType::kInt64, comm::MemoryKind::kHost}, comm::ReduceOp::kSum);
  return count;
}

at::Tensor NoisyGdModel::full_gradient(const LocalData& data) {
  check_data(data, "gradient");
  const std::int64_t n = global_count(data);
  if (n < 1) throw NoisyGdError("noisy GD gradient: no records on any rank");
  return gradient(data, n);
}

at::Tensor NoisyGdModel::gradient(const LocalData& data, std::int64_t n) {
  // Tile by tile (at most kNoisyGdTileRows rows of one block): logits X_t W, softmax, residual
  // p - e_y, the per-example clip, then X_t^T R_t rounded to fixed point (noisy_gd_kernel.h). A
  // tile's floats depend only on its rows and W, whatever rank holds it, and the integer sums are
  // exact: a model is identical on 1 or N ranks for any assignment of whole blocks.
  if (n > kMaxRecords)
    throw NoisyGdError("noisy GD gradient: n = " + std::to_string(n) + " records is more than the exact sums allow (" +
                       std::to_string(kMaxRecords) + ")");
  const std::int64_t rows = data.features.size(0);
  const std::int64_t d = config_.num_features;
  const std::int64_t classes = config_.num_classes;
  const at::Tensor x_tensor = data.features.contiguous();
  const at::Tensor y_tensor = data.labels.contiguous();
  const at::Tensor w_tensor = weights_.contiguous();
  const double* x = x_tensor.data_ptr<double>();
  const std::int64_t* y = y_tensor.data_ptr<std::int64_t>();
  const int bits = fixed_point_bits(n);
  detail::TileSums tiles(w_tensor.data_ptr<double>(), d, classes, config_.settings.params.clip, bits, kFeatureBound,
                         detail::best_tile_kernel());
  const auto add_tile = [&](std::int64_t begin, std::int64_t end) {
    const std::int64_t bad = tiles.add(x + begin * d, y + begin, end - begin);
    if (bad >= 0) {
      const double* row = x + (begin + bad) * d;
      std::int64_t j = 0;
      while (j + 1 < d && std::abs(row[j]) <= kFeatureBound) ++j;
      throw NoisyGdError("noisy GD gradient on rank " + std::to_string(comm_->rank()) + ": feature " + std::to_string(j) +
                         " of local row " + std::to_string(begin + bad) + " is " + std::to_string(row[j]) +
                         "; features must come from normalize_features() (norm 1)");
    }
    if (bad == -2)
      throw NoisyGdError("noisy GD gradient on rank " + std::to_string(comm_->rank()) +
                         ": a tile's gradient is not finite (the weights diverged)");
  };
  // Blocks as LocalData gives them, each cut into tiles from its first row.
  std::int64_t begin = 0;
  const auto add_block = [&](std::int64_t end) {
    for (; begin < end; begin = std::min(end, begin + kNoisyGdTileRows)) add_tile(begin, std::min(end, begin + kNoisyGdTileRows));
  };
  for (const std::int64_t end : data.block_ends) add_block(end);
  add_block(rows);  // block_ends empty: the whole share is one block

  std::vector<std::int64_t>& sum = tiles.sums();
  if (comm_->size() > 1)
    comm_->allreduce({sum.data(), sum.size(), comm::DataType::kInt64, comm::MemoryKind::kHost}, comm::ReduceOp::kSum);
  at::Tensor gradient = torch::empty({d, classes}, torch::kFloat64);
  double* g = gradient.data_ptr<double>();
  for (std::size_t k = 0; k < sum.size(); ++k) g[k] = std::ldexp(static_cast<double>(sum[k]), -bits) / static_cast<double>(n);
  return gradient + config_.settings.params.lambda * weights_;
}

void NoisyGdModel::run_steps(const LocalData& data, std::int64_t n, std::int64_t steps) {
  if (n < 1) throw NoisyGdError("noisy GD: no records on any rank to train on");
  const double noise_scale = std::sqrt(step_noise_variance(config_.settings.params));
  storage::ProgressTask progress("noisy-gd", steps, "steps");
  for (std::int64_t k = 0; k < steps; ++k) {
    progress.advance(1);
    weights_ = weights_ - config_.settings.params.eta * gradient(data, n) +
               noise_scale * step_noise(config_.seed, step_, config_.num_features, config_.num_classes);
    ++step_;
  }
}

void NoisyGdModel::train(const LocalData& data) {
  check_data(data, "train");
  const std::int64_t n = global_count(data);
  accountant_.emplace(config_.settings.params, n, config_.settings.delta);
  weights_ = torch::zeros({config_.num_features, config_.num_classes}, torch::kFloat64);
  run_steps(data, n, config_.settings.train_steps);
  accountant_->record_training(config_.settings.train_steps);
}

void NoisyGdModel::continue_training(const LocalData& data, std::int64_t steps) {
  check_data(data, "continue_training");
  if (steps < 0) throw NoisyGdError("noisy GD continue_training: steps = " + std::to_string(steps) + " must be >= 0");
  const std::int64_t n = global_count(data);
  if (n != accountant().current_n())
    throw NoisyGdError("noisy GD continue_training: the data holds " + std::to_string(n) +
                       " records but the model was trained on " + std::to_string(accountant().current_n()) +
                       ": remove records through delete_records() so that the accountant knows");
  run_steps(data, n, steps);
  accountant_->record_training(steps);
}

DeletionReceipt NoisyGdModel::delete_records(const LocalData& remaining) {
  const auto start = std::chrono::steady_clock::now();
  check_data(remaining, "delete_records");
  const std::int64_t n_before = accountant().current_n();
  const std::int64_t n_after = global_count(remaining);
  if (n_after > n_before)
    throw NoisyGdError("noisy GD delete_records: the remaining data holds " + std::to_string(n_after) +
                       " records, more than the " + std::to_string(n_before) + " the model was trained on");
  // Plan on a copy: a refusal (every record deleted, target unreachable) leaves the model as it was.
  Accountant next = *accountant_;
  next.record_deletion(n_before - n_after);
  const DeletionPlan plan = next.plan_deletion(config_.settings.target_epsilon);
  accountant_ = std::move(next);

  DeletionReceipt receipt;
  receipt.deleted = n_before - n_after;
  receipt.n_before = n_before;
  receipt.n_after = n_after;
  receipt.unlearning_steps = plan.steps;
  receipt.z = plan.z;
  receipt.delta = plan.unlearning.delta;
  receipt.assumptions = config_.settings.params;
  receipt.gradient_bound = gradient_bound(config_.settings.params);
  receipt.certified = plan.certified;
  receipt.retrained = retrain_is_cheaper(plan.steps, config_.settings.train_steps);
  if (receipt.retrained) {
    // A model retrained from theta = 0 on the remaining data never saw the deleted records.
    weights_ = torch::zeros_like(weights_);
    accountant_->reset_history();
    run_steps(remaining, n_after, config_.settings.train_steps);
    accountant_->record_training(config_.settings.train_steps);
    receipt.steps_run = config_.settings.train_steps;
    receipt.epsilon = 0.0;  // exactly distributed as retraining without the records: (0, 0)
    receipt.delta = 0.0;
    receipt.alpha = std::numeric_limits<double>::infinity();
  } else {
    run_steps(remaining, n_after, plan.steps);
    accountant_->record_training(plan.steps);
    receipt.steps_run = plan.steps;
    receipt.epsilon = plan.unlearning.epsilon;
    receipt.alpha = plan.unlearning.alpha;
  }
  receipt.dp_epsilon = accountant_->remaining_dp().epsilon;
  receipt.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return receipt;
}

at::Tensor NoisyGdModel::example_losses(const at::Tensor& features, const at::Tensor& labels) const {
  check_data({features, labels}, "example_losses");
  const at::Tensor log_probabilities = torch::log_softmax(features.mm(weights_), 1);
  return -log_probabilities.gather(1, labels.unsqueeze(1)).squeeze(1);
}

at::Tensor NoisyGdModel::predict(const at::Tensor& features) const {
  check_features(features, "predict");
  return features.mm(weights_).argmax(1);
}

double NoisyGdModel::accuracy(const LocalData& data) {
  check_data(data, "accuracy");
  std::int64_t counts[2] = {predict(data.features).eq(data.labels).sum().item<std::int64_t>(), data.labels.numel()};
  comm_->allreduce({counts, 2, comm::DataType::kInt64, comm::MemoryKind::kHost}, comm::ReduceOp::kSum);
  if (counts[1] == 0) throw NoisyGdError("noisy GD accuracy: no records on any rank");
  return static_cast<double>(counts[0]) / static_cast<double>(counts[1]);
}

storage::CheckpointInfo NoisyGdModel::save(storage::CheckpointStore& store, const std::string& name,
                                           const nlohmann::json& extra) const {
  if (!extra.is_object()) throw NoisyGdError("noisy GD save: extra metadata must be a JSON object");
  const Accountant& acc = accountant();
  nlohmann::json history = nlohmann::json::array();
  for (const Phase& phase : acc.history()) history.push_back({phase.n, phase.steps, phase.deleted_since});
  nlohmann::json metadata{
      {"kind", kCheckpointKind},
      {"config",
       {{"params", params_json(config_.settings.params)},
        {"num_features", config_.num_features},
        {"num_classes", config_.num_classes},
        {"train_steps", config_.settings.train_steps},
        {"target_epsilon", config_.settings.target_epsilon},
        {"delta", config_.settings.delta ? nlohmann::json(*config_.settings.delta) : nlohmann::json()},
        {"seed", config_.seed}}},
      {"accountant", {{"n", acc.current_n()}, {"delta", acc.delta()}, {"history", history}}},
      {"next_step", step_},
  };
  for (const auto& [key, value] : extra.items()) {
    if (metadata.contains(key)) throw NoisyGdError("noisy GD save: extra metadata may not replace '" + key + "'");
    metadata[key] = value;
  }
  const at::Tensor w = weights_.contiguous();
  std::vector<storage::TensorData> tensors{storage::TensorData::from_values<double>(
      "weights", {config_.num_features, config_.num_classes},
      std::span<const double>(w.data_ptr<double>(), static_cast<std::size_t>(w.numel())))};
  return store.write(name, tensors, metadata);
}

NoisyGdModel NoisyGdModel::load(const storage::CheckpointStore& store, const std::string& name,
                                comm::Communicator& comm) {
  return from_checkpoint(store.load_latest(name), comm);
}

NoisyGdModel NoisyGdModel::load(const storage::CheckpointStore& store, const std::string& name, int version,
                                comm::Communicator& comm) {
  return from_checkpoint(store.load(name, version), comm);
}

NoisyGdModel NoisyGdModel::from_checkpoint(const storage::Checkpoint& checkpoint, comm::Communicator& comm) {
  const std::string& name = checkpoint.info.name;
  const nlohmann::json& meta = checkpoint.info.metadata;
  const std::string where = "noisy GD load of checkpoint '" + name + "' version " +
                            std::to_string(checkpoint.info.version) + " (" + checkpoint.info.path.string() + "): ";
  if (!meta.is_object() || meta.value("kind", "") != kCheckpointKind)
    throw NoisyGdError(where + "not a noisy-GD model (metadata kind is not '" + kCheckpointKind + "')");
  try {
    const nlohmann::json& c = meta.at("config");
    NoisyGdConfig config;
    const nlohmann::json& p = c.at("params");
    config.settings.params = params_from_json(p);
    config.num_features = c.at("num_features").get<std::int64_t>();
    config.num_classes = c.at("num_classes").get<std::int64_t>();
    config.settings.train_steps = c.at("train_steps").get<std::int64_t>();
    config.settings.target_epsilon = c.at("target_epsilon").get<double>();
    if (!c.at("delta").is_null()) config.settings.delta = c.at("delta").get<double>();
    config.seed = c.at("seed").get<std::uint64_t>();

    NoisyGdModel model(config, comm);
    const nlohmann::json& a = meta.at("accountant");
    std::vector<Phase> history;
    for (const nlohmann::json& phase : a.at("history"))
      history.push_back({phase.at(0).get<std::int64_t>(), phase.at(1).get<std::int64_t>(), phase.at(2).get<std::int64_t>()});
    model.accountant_.emplace(config.settings.params, a.at("n").get<std::int64_t>(), std::move(history),
                              a.at("delta").get<double>());
    model.step_ = meta.at("next_step").get<std::int64_t>();
    const std::vector<double> values = checkpoint.tensor("weights").values<double>();
    if (static_cast<std::int64_t>(values.size()) != config.num_features * config.num_classes)
      throw NoisyGdError(where + "weights hold " + std::to_string(values.size()) + " values, expected " +
                         std::to_string(config.num_features * config.num_classes));
    model.weights_ = torch::from_blob(const_cast<double*>(values.data()), {config.num_features, config.num_classes},
                                      torch::kFloat64)
                         .clone();
    return model;
  } catch (const nlohmann::json::exception& e) {
    throw NoisyGdError(where + "malformed metadata: " + e.what());
  }
}

}  // namespace lethe::trainer
