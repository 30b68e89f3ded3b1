#include "trainer/noisy_gd_job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <unordered_set>

#include "comm/agree.h"
#include "storage/dataset.h"
#include "trainer/compute_threads.h"
#include "trainer/error.h"
#include "trainer/frozen_backbone.h"
#include "trainer/job.h"
#include "trainer/json_fields.h"
#include "trainer/model.h"
#include "trainer/pretrain.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// mix_seed tag of the noise stream, apart from S3T's job (10) and pretraining (3) streams.
constexpr std::uint64_t kNoiseSeedTag = 20;

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

json encode_noisy_gd_section(const NoisyGdSection& s) {
  return {{"series", s.series},
          {"version", s.version},
          {"digest", s.digest},
          {"records", s.records},
          {"steps_taken", s.steps_taken},
          {"train_steps", s.train_steps},
          {"target_epsilon", s.target_epsilon},
          {"delta", s.delta},
          {"dp_epsilon", s.dp_epsilon},
          {"certified", s.certified},
          {"params", params_json(s.params)}};
}

NoisyGdSection decode_noisy_gd_section(const json& j, const std::string& origin) {
  const JsonFields f(j, origin, "routes.noisy_gd.");
  NoisyGdSection s;
  s.series = f.get<std::string>("series");
  s.version = f.get<int>("version");
  s.digest = f.get<std::string>("digest");
  s.records = f.get<std::int64_t>("records");
  s.steps_taken = f.get<std::int64_t>("steps_taken");
  s.train_steps = f.get<std::int64_t>("train_steps");
  s.target_epsilon = f.get<double>("target_epsilon");
  s.delta = f.get<double>("delta");
  s.dp_epsilon = f.get<double>("dp_epsilon");
  s.certified = f.get<bool>("certified");
  try {
    s.params = params_from_json(f.raw("params"));
  } catch (const nlohmann::json::exception& e) {
    f.fail("params", e.what());
  }
  return s;
}

NoisyGdConfig noisy_gd_config(const JobSettings& settings, const ModelConfig& model) {
  NoisyGdConfig config;
  config.settings = settings.noisy_gd;
  config.num_features = feature_dim(model) + 1;  // + the bias input of normalize_features
  config.num_classes = model.num_classes;
  config.seed = mix_seed(settings.seed, kNoiseSeedTag);
  return config;
}

at::Tensor noisy_gd_features(LetheModel& backbone, const at::Tensor& inputs, std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const int depth = backbone.active_depth();
  backbone.set_active_depth(0);
  const auto device = backbone.head_weight().device();
  std::vector<torch::Tensor> parts;
  for (std::int64_t start = 0; start < inputs.size(0); start += batch_size) {
    const auto batch = inputs.slice(0, start, std::min(inputs.size(0), start + batch_size)).to(device);
    parts.push_back((backbone.features(batch) - backbone.feature_mean()).to(torch::kCPU));
  }
  backbone.set_active_depth(depth);
  const auto raw = parts.empty() ? torch::zeros({0, feature_dim(backbone.config())}) : torch::cat(parts, 0);
  return normalize_features(raw);
}

std::vector<std::int64_t> noisy_gd_block_ends(std::span<const std::uint64_t> rows) {
  std::vector<std::int64_t> ends;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    if (rows[i] / kNoisyGdBlockRows != rows[i - 1] / kNoisyGdBlockRows) ends.push_back(static_cast<std::int64_t>(i));
  }
  if (!rows.empty()) ends.push_back(static_cast<std::int64_t>(rows.size()));
  return ends;
}

NoisyGdShare load_noisy_gd_share(const storage::Dataset& dataset, FrozenBackbone& backbone,
                                 std::span<const std::uint64_t> exclude, comm::Communicator& comm) {
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;  // public records pretrained the backbone
  const std::unordered_set<std::uint64_t> excluded(exclude.begin(), exclude.end());
  std::vector<std::uint64_t> live;
  for (const auto row : dataset.select(filter)) {
    if (excluded.count(row) == 0) live.push_back(row);
  }
  std::vector<std::uint64_t> rows;
  for (const auto row : live) {
    const auto block = row / kNoisyGdBlockRows;
    if (block % static_cast<std::uint64_t>(comm.size()) == static_cast<std::uint64_t>(comm.rank())) rows.push_back(row);
  }
  auto block_ends = noisy_gd_block_ends(rows);  // in `rows`: where each of this rank's blocks ends
  const auto records = read_records(dataset, rows, backbone.config());
  NoisyGdShare share;
  std::vector<at::Tensor> features;
  backbone.use([&](LetheModel& model) {
    std::int64_t begin = 0;
    for (const auto end : block_ends) {  // one batch per block, whatever the rank
      features.push_back(noisy_gd_features(model, records.inputs.slice(0, begin, end), end - begin));
      begin = end;
    }
  });
  share.data.features = features.empty() ? torch::zeros({0, feature_dim(backbone.config()) + 1}, torch::kFloat64)
                                         : torch::cat(features, 0);
  share.data.labels = records.labels;
  share.data.block_ends = std::move(block_ends);
  share.ids.reserve(rows.size());
  for (const auto row : rows) share.ids.emplace_back(dataset.id(row));
  share.rows = std::move(rows);
  return share;
}

NoisyGdShare without(const NoisyGdShare& share, const std::vector<std::string>& deleted) {
  const std::unordered_set<std::string> gone(deleted.begin(), deleted.end());
  std::vector<std::int64_t> keep;
  NoisyGdShare out;
  for (std::size_t i = 0; i < share.ids.size(); ++i) {
    if (gone.count(share.ids[i]) == 0) {
      keep.push_back(static_cast<std::int64_t>(i));
      out.ids.push_back(share.ids[i]);
      out.rows.push_back(share.rows[i]);
    }
  }
  const auto index = torch::tensor(keep, torch::kInt64);
  out.data.features = share.data.features.index_select(0, index);
  out.data.labels = share.data.labels.index_select(0, index);
  out.data.block_ends = noisy_gd_block_ends(out.rows);
  return out;
}

NoisyGdModel load_noisy_gd_model(const JobManifest& manifest, comm::Communicator& comm) {
  const auto* encoded = manifest.section(kNoisyGdRouteName);
  if (encoded == nullptr) {
    throw TrainerError(ErrorKind::kNotFound, manifest.path().string() +
                                                 " names no noisy-GD model: add a noisy_gd section to the job config "
                                                 "and run `lethe train`");
  }
  const auto section = decode_noisy_gd_section(*encoded, manifest.path().string());
  const storage::CheckpointStore store(manifest.checkpoints_path());
  const auto versions = store.versions(section.series);
  const auto it = std::find_if(versions.begin(), versions.end(), [&](const auto& v) { return v.version == section.version; });
  if (it == versions.end() || it->digest != section.digest) {
    throw TrainerError(ErrorKind::kMismatch, (store.root() / section.series).string() + " version " +
                                                 std::to_string(section.version) +
                                                 " is not the model the manifest records (digest " +
                                                 section.digest.substr(0, 16) +
                                                 "…): it was replaced or purged. Restore the job directory from a backup");
  }
  return NoisyGdModel::load(store, section.series, section.version, comm);
}

NoisyGdSection commit_noisy_gd_model(const NoisyGdModel& model, const JobManifest& manifest) {
  storage::CheckpointStore store(manifest.checkpoints_path());
  const json trained_on = {{"config_digest", manifest.config_digest},
                           {"dataset", manifest.dataset.uuid},
                           {"records", model.accountant().current_n()}};
  const auto info = model.save(store, kNoisyGdSeries, {{"job", trained_on}});
  const Accountant& accountant = model.accountant();
  NoisyGdSection section;
  section.version = info.version;
  section.digest = info.digest;
  section.records = accountant.current_n();
  section.steps_taken = model.steps_taken();
  section.train_steps = model.config().settings.train_steps;
  section.target_epsilon = model.config().settings.target_epsilon;
  section.delta = accountant.delta();
  section.dp_epsilon = accountant.remaining_dp().epsilon;
  section.params = model.config().settings.params;
  section.certified = is_certified(section.params);
  return section;
}

json to_json(const NoisyGdRunReport& r) {
  return {{"records", r.records},
          {"steps", r.steps},
          {"resumed", r.resumed},
          {"version", r.version},
          {"digest", r.digest},
          {"train_accuracy", r.train_accuracy},
          {"rank0", {{"records", r.local_records}, {"feature_seconds", r.feature_seconds}}},
          {"train_seconds", r.train_seconds},
          {"seconds", r.seconds}};
}

NoisyGdRunReport run_noisy_gd_job(const JobSettings& settings, comm::Communicator& comm, bool resume) {
  const auto start = std::chrono::steady_clock::now();
  const auto dataset = open_job_dataset(settings);
  set_compute_threads(settings.threads);
  const ModelConfig model_config = job_model_config(settings, dataset);
  const NoisyGdConfig config = noisy_gd_config(settings, model_config);
  // Check the settings and the backbone before anything is written.
  (void)NoisyGdModel(config, comm);
  FrozenBackbone backbone(model_config, settings.backbone, settings.trunk, settings.device);

  // Rank 0 decides whether a committed model is kept (resume).
  std::int32_t committed_version = 0;
  comm::on_root(comm, "preparing the noisy-GD model", [&] {
    const auto manifest = read_job_manifest(settings.job_dir);
    const storage::CheckpointStore store(manifest.checkpoints_path());
    if (const auto* section = manifest.section(kNoisyGdRouteName); section != nullptr && resume) {
      const auto version = decode_noisy_gd_section(*section, manifest.path().string()).version;
      try {
        (void)NoisyGdModel::load(store, kNoisyGdSeries, version, comm);
      } catch (const std::exception& e) {
        throw TrainerError(ErrorKind::kDamaged, "--resume: the noisy-GD model the manifest names (" +
                                                    (store.root() / kNoisyGdSeries).string() + " version " +
                                                    std::to_string(version) + ") does not load: " + e.what() +
                                                    ". Purge that series to retrain it, then --resume");
      }
      committed_version = version;
    } else if (!store.versions(kNoisyGdSeries).empty() && !resume) {
      throw TrainerError(ErrorKind::kInvalidInput, "checkpoint series " + (store.root() / kNoisyGdSeries).string() +
                                                       " already exists; pass --resume or use an empty job_dir");
    }
  });
  comm.allreduce({&committed_version, 1, comm::DataType::kInt32}, comm::ReduceOp::kMax);

  NoisyGdRunReport report;
  report.steps = settings.noisy_gd.train_steps;
  if (committed_version > 0) {
    std::string text;
    comm::on_root(comm, "reading the committed noisy-GD model", [&] {
      const auto manifest = read_job_manifest(settings.job_dir);
      const auto section = decode_noisy_gd_section(*manifest.section(kNoisyGdRouteName), manifest.path().string());
      report.digest = section.digest;
      text = json{{"records", section.records}, {"steps", section.steps_taken}}.dump();
    });
    const auto shared = json::parse(comm::broadcast_string(comm, text));
    report.resumed = true;
    report.version = committed_version;
    report.records = shared.at("records").get<std::int64_t>();
    report.steps = shared.at("steps").get<std::int64_t>();
    report.seconds = seconds_since(start);
    return report;
  }

  NoisyGdShare share;
  comm::on_every_rank(comm, "reading the noisy-GD records", [&] {
    const auto t0 = std::chrono::steady_clock::now();
    share = load_noisy_gd_share(dataset, backbone, {}, comm);
    report.feature_seconds = seconds_since(t0);
  });
  report.local_records = share.data.labels.size(0);
  spdlog::info("noisy GD: {} records on this rank, features {:.1f} s", report.local_records, report.feature_seconds);

  NoisyGdModel model(config, comm);
  const auto t0 = std::chrono::steady_clock::now();
  model.train(share.data);
  report.train_seconds = seconds_since(t0);
  report.records = model.accountant().current_n();
  report.train_accuracy = model.accuracy(share.data);

  std::int32_t version = 0;
  comm::on_root(comm, "committing the noisy-GD model", [&] {
    auto manifest = read_job_manifest(settings.job_dir);
    const auto section = commit_noisy_gd_model(model, manifest);
    manifest.routes[kNoisyGdRouteName] = encode_noisy_gd_section(section);
    commit_job_manifest(manifest);
    version = section.version;
    report.digest = section.digest;
    spdlog::info("noisy GD: committed {} version {} (digest {})", kNoisyGdSeries, section.version, section.digest.substr(0, 16));
  });
  comm.allreduce({&version, 1, comm::DataType::kInt32}, comm::ReduceOp::kMax);
  report.version = version;
  report.seconds = seconds_since(start);
  return report;
}

}  // namespace lethe::trainer
