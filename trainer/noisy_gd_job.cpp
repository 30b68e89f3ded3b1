#include "trainer/noisy_gd_job.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <stdexcept>

#include "comm/in_process.h"
#include "storage/dataset.h"
#include "trainer/job_manifest.h"
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

json read_trained_manifest(const fs::path& job_dir) {
  if (!fs::exists(job_manifest_path(job_dir)))
    throw std::runtime_error(job_dir.string() + " is not a job directory (no manifest.json); run `lethe train` first");
  return read_job_manifest(job_dir);
}

storage::CheckpointStore job_store(const fs::path& job_dir, const json& manifest) {
  return storage::CheckpointStore(job_dir / manifest.value("checkpoints", "checkpoints"));
}

const json& noisy_gd_section(const fs::path& job_dir, const json& manifest) {
  if (!manifest.contains("noisy_gd") || !manifest.at("noisy_gd").is_object())
    throw std::runtime_error(job_manifest_path(job_dir).string() +
                             " names no noisy-GD model: add a noisy_gd section to the job config and run `lethe train`");
  return manifest.at("noisy_gd");
}

// The backbone of a job directory, as its manifest records it, on `device`.
LetheModel job_backbone(const fs::path& job_dir, const json& manifest, const torch::Device& device) {
  LetheModel model(model_config_from_json(manifest.at("model")), 0);
  load_backbone(model, job_dir / manifest.value("backbone", "backbone.h5"));
  model.to(device);
  return model;
}

torch::Device job_device(const json& manifest) {
  return manifest.at("config").value("device", "cpu") == "cuda" ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

std::int64_t job_batch_size(const json& manifest) {
  return manifest.at("config").at("training").value("cache_batch_size", std::int64_t{1024});
}

}  // namespace

at::Tensor noisy_gd_features(LetheModel& backbone, const at::Tensor& inputs, std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const int depth = backbone.active_depth();
  backbone.set_active_depth(0);
  const auto device = backbone.head_weight().device();
  std::vector<torch::Tensor> parts;
  for (std::int64_t start = 0; start < inputs.size(0); start += batch_size) {
    const auto batch = inputs.slice(0, start, std::min(inputs.size(0), start + batch_size)).to(device);
    parts.push_back(backbone.features(batch).to(torch::kCPU));
  }
  backbone.set_active_depth(depth);
  const auto raw = parts.empty() ? torch::zeros({0, feature_dim(backbone.config())}) : torch::cat(parts, 0);
  return normalize_features(raw);
}

NoisyGdShare load_noisy_gd_share(const fs::path& job_dir, comm::Communicator& comm) {
  const json manifest = read_trained_manifest(job_dir);
  const fs::path dataset_path = manifest.at("dataset").get<std::string>();
  const auto dataset = storage::Dataset::open(dataset_path);
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;  // public records pretrained the backbone
  const auto live = dataset.select(filter);
  std::vector<std::uint64_t> rows;
  for (std::size_t i = static_cast<std::size_t>(comm.rank()); i < live.size(); i += static_cast<std::size_t>(comm.size()))
    rows.push_back(live[i]);
  LetheModel backbone = job_backbone(job_dir, manifest, job_device(manifest));
  const auto records = read_records(dataset, rows, backbone.config());
  NoisyGdShare share;
  share.data.features = noisy_gd_features(backbone, records.inputs, job_batch_size(manifest));
  share.data.labels = records.labels;
  share.ids.reserve(rows.size());
  for (const auto row : rows) share.ids.emplace_back(dataset.id(row));
  return share;
}

NoisyGdModel load_job_noisy_gd_model(const fs::path& job_dir, comm::Communicator& comm) {
  const json manifest = read_trained_manifest(job_dir);
  const json& section = noisy_gd_section(job_dir, manifest);
  return NoisyGdModel::load(job_store(job_dir, manifest), section.at("series").get<std::string>(),
                            section.at("version").get<int>(), comm);
}

storage::CheckpointInfo commit_noisy_gd_model(const NoisyGdModel& model, const fs::path& job_dir, json& manifest) {
  auto store = job_store(job_dir, manifest);
  const json trained_on = {{"config_digest", manifest.value("config_digest", "")},
                           {"dataset", manifest.value("dataset", "")},
                           {"records", model.accountant().current_n()}};
  const auto info = model.save(store, kNoisyGdSeries, {{"job", trained_on}});
  const Accountant& accountant = model.accountant();
  const NoisyGdParams& p = model.config().params;
  manifest["noisy_gd"] = {
      {"series", kNoisyGdSeries},
      {"version", info.version},
      {"digest", info.digest},
      {"records", accountant.current_n()},
      {"steps_taken", model.steps_taken()},
      {"train_steps", model.config().train_steps},
      {"target_epsilon", model.config().target_epsilon},
      {"delta", accountant.delta()},
      {"dp_epsilon", accountant.remaining_dp().epsilon},
      {"certified", is_certified(p)},
      {"params", {{"lambda", p.lambda}, {"eta", p.eta}, {"sigma", p.sigma}, {"clip", p.clip}, {"beta", p.beta}}},
  };
  return info;
}

NoisyGdRunReport run_noisy_gd_job(const S3TJobSpec& job, const NoisyGdJobSpec& spec, comm::Communicator& comm,
                                  bool resume, bool job_dir_prepared) {
  const auto start = std::chrono::steady_clock::now();
  const auto layout = open_job_dataset(job).layout();
  torch::set_num_threads(job.threads);
  ModelConfig model_config = job.model;
  set_input_shape(model_config, layout);
  validate(model_config);
  NoisyGdConfig config;
  config.params = spec.params;
  config.num_features = feature_dim(model_config) + 1;  // + the bias input of normalize_features
  config.num_classes = model_config.num_classes;
  config.train_steps = spec.train_steps;
  config.target_epsilon = spec.target_epsilon;
  config.delta = spec.delta;
  config.seed = mix_seed(job.seed, kNoiseSeedTag);
  {
    // Check the settings and the backbone before anything is written.
    NoisyGdModel check(config, comm);
    LetheModel prototype(model_config, 0);
    load_backbone(prototype, job.backbone);
  }

  // Rank 0 prepares the directory and decides whether a committed model is kept (--resume).
  std::string error;
  std::int32_t committed_version = 0;
  if (comm.rank() == 0) {
    try {
      if (!job_dir_prepared) prepare_job_dir(job, model_config, {}, resume);
      const json manifest = read_job_manifest(job.job_dir);
      const auto store = job_store(job.job_dir, manifest);
      if (manifest.contains("noisy_gd") && resume) {
        const json& section = manifest.at("noisy_gd");
        const int version = section.at("version").get<int>();
        try {
          (void)NoisyGdModel::load(store, kNoisyGdSeries, version, comm);
        } catch (const std::exception& e) {
          throw std::runtime_error("--resume: the noisy-GD model the manifest names (" +
                                   (store.root() / kNoisyGdSeries).string() + " version " + std::to_string(version) +
                                   ") does not load: " + e.what() + ". Purge that series to retrain it, then --resume");
        }
        committed_version = version;
      } else if (!store.versions(kNoisyGdSeries).empty() && !resume) {
        throw std::runtime_error("checkpoint series " + (store.root() / kNoisyGdSeries).string() +
                                 " already exists; pass --resume or use an empty job_dir");
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree_on_failure(comm, error, "preparing the noisy-GD job");
  comm.allreduce({&committed_version, 1, comm::DataType::kInt32}, comm::ReduceOp::kMax);

  NoisyGdRunReport report;
  report.steps = spec.train_steps;
  if (committed_version > 0) {
    NoisyGdModel model = load_job_noisy_gd_model(job.job_dir, comm);
    report.resumed = true;
    report.version = committed_version;
    report.records = model.accountant().current_n();
    report.steps = model.steps_taken();
    if (comm.rank() == 0) report.digest = read_job_manifest(job.job_dir).at("noisy_gd").value("digest", "");
    report.seconds = seconds_since(start);
    return report;
  }

  NoisyGdShare share;
  try {
    const auto t0 = std::chrono::steady_clock::now();
    share = load_noisy_gd_share(job.job_dir, comm);
    report.feature_seconds = seconds_since(t0);
    error.clear();
  } catch (const std::exception& e) {
    error = "rank " + std::to_string(comm.rank()) + ": reading the noisy-GD records: " + e.what();
  }
  agree_on_failure(comm, error, "reading the noisy-GD records");
  report.local_records = share.data.labels.size(0);
  spdlog::info("noisy GD: {} records on this rank, features {:.1f} s", report.local_records, report.feature_seconds);

  NoisyGdModel model(config, comm);
  const auto t0 = std::chrono::steady_clock::now();
  model.train(share.data);
  report.train_seconds = seconds_since(t0);
  report.records = model.accountant().current_n();
  report.train_accuracy = model.accuracy(share.data);

  std::int32_t version = 0;
  if (comm.rank() == 0) {
    try {
      json manifest = read_job_manifest(job.job_dir);
      const auto info = commit_noisy_gd_model(model, job.job_dir, manifest);
      if (!job_dir_prepared) manifest["status"] = "trained";
      write_job_manifest(job.job_dir, manifest);
      version = info.version;
      report.digest = info.digest;
      spdlog::info("noisy GD: committed {} version {} (digest {})", kNoisyGdSeries, info.version, info.digest.substr(0, 16));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree_on_failure(comm, error, "committing the noisy-GD model");
  comm.allreduce({&version, 1, comm::DataType::kInt32}, comm::ReduceOp::kMax);
  report.version = version;
  report.seconds = seconds_since(start);
  return report;
}

json evaluate_noisy_gd(const fs::path& job_dir, const json& manifest, LetheModel& backbone, const at::Tensor& inputs,
                       const at::Tensor& labels) {
  const json& section = noisy_gd_section(job_dir, manifest);
  auto world = comm::make_in_process_world(1);
  const int version = section.at("version").get<int>();
  const NoisyGdModel model =
      NoisyGdModel::load(job_store(job_dir, manifest), section.at("series").get<std::string>(), version, *world.front());
  const auto features = noisy_gd_features(backbone, inputs, job_batch_size(manifest));
  const auto correct = model.predict(features).eq(labels.to(torch::kInt64)).sum().item<std::int64_t>();
  const double accuracy = labels.size(0) == 0 ? 0.0 : static_cast<double>(correct) / static_cast<double>(labels.size(0));
  return {{"name", "noisy_gd"},
          {"accuracy", accuracy},
          {"version", version},
          {"digest", section.value("digest", "")},
          {"trained_records", model.accountant().current_n()}};
}

}  // namespace lethe::trainer
