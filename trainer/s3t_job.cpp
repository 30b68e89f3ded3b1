#include "trainer/s3t_job.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <algorithm>
#include <limits>
#include <map>
#include <sstream>

#include "storage/checkpoint_store.h"
#include "storage/progress.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "storage/error.h"
#include "storage/record_assignment.h"
#include "trainer/activation_cache.h"
#include "trainer/ensemble.h"
#include "trainer/job_manifest.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/pretrain.h"
#include "trainer/s3t_serving.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifestFormat = "lethe-s3t-job";

void copy_durably(const fs::path& from, const fs::path& to) {
  const auto tmp = storage::temp_path_for(to);
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing);
  storage::commit_file(tmp, to);
}

std::vector<storage::TensorData> to_tensor_data(const PrefixState& state) {
  std::vector<storage::TensorData> out;
  for (const auto& [name, tensor] : state.tensors) {
    const auto t = tensor.to(torch::kCPU).to(torch::kFloat32).contiguous();
    out.push_back(storage::TensorData::from_floats(name, t.sizes().vec(),
                                                   {t.data_ptr<float>(), static_cast<std::size_t>(t.numel())}));
  }
  return out;
}

PrefixState from_checkpoint(const storage::Checkpoint& checkpoint) {
  PrefixState state;
  state.prefix = checkpoint.info.metadata.at("prefix").get<int>();
  for (const auto& tensor : checkpoint.tensors) {
    auto values = tensor.floats();
    state.tensors.emplace_back(tensor.name, torch::tensor(values, torch::kFloat32).reshape(tensor.shape));
  }
  return state;
}

// The committed prefixes of a series: prefix -> (version, digest), latest version per prefix.
std::map<int, storage::CheckpointInfo> committed_prefixes(const storage::CheckpointStore& store, const std::string& name) {
  std::map<int, storage::CheckpointInfo> out;
  for (auto& info : store.versions(name)) {
    if (info.metadata.contains("prefix")) out[info.metadata["prefix"].get<int>()] = info;
  }
  return out;
}

std::uint64_t records_digest(const storage::Dataset& dataset, const std::vector<std::uint64_t>& rows,
                             const std::vector<std::int64_t>& indices) {
  std::string ids;
  for (const auto i : indices) {
    ids += dataset.id(rows[static_cast<std::size_t>(i)]);
    ids += '\n';
  }
  return storage::siphash24(1, 2, {reinterpret_cast<const std::uint8_t*>(ids.data()), ids.size()});
}

struct ShardRecords {
  std::vector<std::uint64_t> rows;
  std::vector<int> slice_of_record;
};

// Non-public live records per shard, and each one's slice, from the dataset's keyed hash.
std::vector<ShardRecords> assign_records(const storage::Dataset& dataset, const S3TJobSpec& spec) {
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;
  std::vector<ShardRecords> shards(static_cast<std::size_t>(spec.shards));
  const auto rows = dataset.select(filter);
  for (const auto row : rows) {
    const auto a = dataset.assigner().assign(dataset.id(row), spec.shards, spec.slices);
    auto& shard = shards[static_cast<std::size_t>(a.shard)];
    shard.rows.push_back(row);
    shard.slice_of_record.push_back(a.slice);
  }
  for (int k = 0; k < spec.shards; ++k) {
    std::vector<int> counts(static_cast<std::size_t>(spec.slices), 0);
    for (const auto s : shards[static_cast<std::size_t>(k)].slice_of_record) ++counts[static_cast<std::size_t>(s)];
    for (int s = 0; s < spec.slices; ++s) {
      if (counts[static_cast<std::size_t>(s)] == 0) {
        throw std::invalid_argument(spec.config_file.string() + ": s3t.slices: shard " + std::to_string(k) + " slice " +
                                    std::to_string(s) + " has no records (" + std::to_string(rows.size()) +
                                    " non-public records in " + dataset.path().string() + " for " +
                                    std::to_string(spec.shards) + " shards x " + std::to_string(spec.slices) +
                                    " slices); lower s3t.shards or s3t.slices");
      }
    }
  }
  return shards;
}

json initial_manifest(const S3TJobSpec& spec, const ModelConfig& model, const std::vector<SliceOrder>& orders) {
  json shards = json::array();
  const int s3t_shards = orders.empty() ? 0 : spec.shards;  // no orders: a job without S3T (noisy GD only)
  for (int k = 0; k < s3t_shards; ++k) {
    json series = json::array();
    for (int b = 0; b < spec.sequences; ++b) series.push_back({{"sequence", b}, {"name", series_name(k, b)}, {"prefixes", json::array()}});
    shards.push_back({{"shard", k}, {"plan", shard_plan_to_json(make_shard_plan(spec.slices, orders, 0))}, {"series", series}});
  }
  return {{"format", kManifestFormat},
          {"format_version", 1},
          {"status", "training"},
          {"config_digest", spec.config_digest},
          {"config", spec.config},
          {"dataset", fs::absolute(spec.dataset).string()},
          {"backbone", "backbone.h5"},
          {"checkpoints", "checkpoints"},
          {"model", to_json(model)},
          {"shards", shards}};
}

// Final manifest: every series' committed prefixes, and each plan's surviving prefix accordingly;
// `before_commit` adds the caller's bookkeeping to the same durable write.
json finish_manifest(const S3TJobSpec& spec, const storage::CheckpointStore& store,
                     const std::function<void(json&)>& before_commit) {
  auto manifest = read_json_file(job_manifest_path(spec.job_dir));
  for (auto& shard : manifest["shards"]) {
    auto plan = shard_plan_from_json(shard["plan"], "manifest.shards.plan");
    for (auto& series : shard["series"]) {
      const int b = series["sequence"].get<int>();
      json prefixes = json::array();
      int depth = 0;
      for (const auto& [prefix, info] : committed_prefixes(store, series["name"].get<std::string>())) {
        prefixes.push_back({{"prefix", prefix}, {"version", info.version}, {"digest", info.digest}});
        if (prefix == depth + 1) depth = prefix;
      }
      series["prefixes"] = prefixes;
      plan.sequences[static_cast<std::size_t>(b)].surviving_prefix = depth;
    }
    shard["plan"] = shard_plan_to_json(plan);
  }
  manifest["status"] = "trained";
  if (before_commit) before_commit(manifest);
  write_job_manifest(spec.job_dir, manifest);
  return manifest;
}

}  // namespace

void prepare_job_dir(const S3TJobSpec& spec, const ModelConfig& model, const std::vector<SliceOrder>& orders, bool resume) {
  const auto manifest = job_manifest_path(spec.job_dir);
  if (fs::exists(manifest)) {
    if (!resume) {
      throw std::runtime_error("job directory " + spec.job_dir.string() +
                               " already holds a run (manifest.json); pass --resume to continue it or choose another job_dir");
    }
    const auto existing = read_json_file(manifest);
    if (existing.value("config_digest", "") != spec.config_digest) {
      throw std::runtime_error("--resume: the config differs from the run in " + spec.job_dir.string() + " (digest " +
                               existing.value("config_digest", "?") + " there, " + spec.config_digest +
                               " now); resume with the same config or start a new job_dir");
    }
    return;
  }
  fs::create_directories(spec.job_dir / "checkpoints");
  if (!spec.config_file.empty() && fs::exists(spec.config_file)) copy_durably(spec.config_file, spec.job_dir / "config.yaml");
  write_text_durably(spec.job_dir / "config.json", spec.config.dump(2) + "\n");
  copy_durably(spec.backbone, spec.job_dir / "backbone.h5");
  write_job_manifest(spec.job_dir, initial_manifest(spec, model, orders));
}

void agree_on_failure(comm::Communicator& comm, const std::string& error, const std::string& what) {
  std::int32_t failed = error.empty() ? 0 : 1;
  comm.allreduce({&failed, 1, comm::DataType::kInt32}, comm::ReduceOp::kMax);
  if (!error.empty()) throw std::runtime_error(error);
  if (failed != 0) {
    throw std::runtime_error("rank " + std::to_string(comm.rank()) + ": another rank failed while " + what +
                             "; its error is printed above");
  }
}

std::string series_name(int shard, int sequence) {
  return "shard" + std::to_string(shard) + "-seq" + std::to_string(sequence);
}

std::vector<std::pair<int, int>> jobs_for_rank(int shards, int sequences, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("jobs_for_rank: rank outside the world");
  const int total = shards * sequences;
  const int begin = static_cast<int>(static_cast<std::int64_t>(total) * rank / world);
  const int end = static_cast<int>(static_cast<std::int64_t>(total) * (rank + 1) / world);
  std::vector<std::pair<int, int>> jobs;
  for (int j = begin; j < end; ++j) jobs.emplace_back(j / sequences, j % sequences);
  return jobs;
}

void check_device(const std::string& device, const fs::path& config_file) {
  if (device == "cpu") return;
  if (device != "cuda") throw std::invalid_argument(config_file.string() + ": device: '" + device + "'; use cpu or cuda");
  if (!torch::cuda::is_available()) {
    throw std::runtime_error(config_file.string() +
                             ": device: cuda was requested but this libtorch sees no CUDA device (Debian's libtorch "
                             "is CPU-only; build against a CUDA libtorch on a GPU machine), or set device: cpu");
  }
}

S3TRunReport run_s3t_job(const S3TJobSpec& spec, comm::Communicator& comm, bool resume) {
  return run_s3t_job(spec, comm, S3TRunOptions{resume, {}});
}

storage::Dataset open_job_dataset(const S3TJobSpec& spec) {
  check_device(spec.device, spec.config_file);
  if (!fs::exists(spec.dataset)) {
    throw std::invalid_argument(spec.config_file.string() + ": dataset: " + spec.dataset.string() +
                                " does not exist; ingest it first (`lethe ingest ...`) or fix the path");
  }
  return storage::Dataset::open(spec.dataset);
}

JobInputsReport check_job_inputs(const S3TJobSpec& spec, bool s3t) {
  const auto dataset = open_job_dataset(spec);
  JobInputsReport report;
  report.records = dataset.size();
  report.live_records = dataset.size() - dataset.tombstoned_count();
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;
  report.trainable_records = dataset.select(filter).size();
  if (report.trainable_records == 0) {
    throw std::invalid_argument(spec.config_file.string() + ": dataset: " + dataset.path().string() +
                                " has no live non-public records to train on; ingest with a --public-fraction below 1");
  }
  report.model = spec.model;
  report.model.sites = s3t ? spec.slices : 1;
  set_input_shape(report.model, dataset.layout());
  validate(report.model);
  if (s3t) {
    report.fewest_slice_records = std::numeric_limits<int>::max();
    for (const auto& shard : assign_records(dataset, spec)) {
      std::vector<int> counts(static_cast<std::size_t>(spec.slices), 0);
      for (const auto slice : shard.slice_of_record) ++counts[static_cast<std::size_t>(slice)];
      report.fewest_slice_records = std::min(report.fewest_slice_records, *std::min_element(counts.begin(), counts.end()));
    }
  }
  LetheModel prototype(report.model, 0);
  load_backbone(prototype, spec.backbone);
  return report;
}

S3TRunReport run_s3t_job(const S3TJobSpec& spec, comm::Communicator& comm, const S3TRunOptions& options) {
  const bool resume = options.resume;
  const auto start = std::chrono::steady_clock::now();
  const auto dataset = open_job_dataset(spec);
  torch::set_num_threads(spec.threads);
  const torch::Device device(spec.device == "cuda" ? torch::kCUDA : torch::kCPU);
  ModelConfig model_config = spec.model;
  model_config.sites = spec.slices;
  set_input_shape(model_config, dataset.layout());
  validate(model_config);
  const auto shard_records = assign_records(dataset, spec);
  const auto orders = select_sequences(spec.selection, spec.slices, spec.sequences, spec.deletion_probabilities, spec.horizon);

  // Check the backbone against the config before anything is written.
  auto prototype = std::make_shared<LetheModel>(model_config, 0);
  load_backbone(*prototype, spec.backbone);

  std::string error;
  if (comm.rank() == 0) {
    try {
      prepare_job_dir(spec, model_config, orders, resume);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree_on_failure(comm, error, "preparing the job directory");

  storage::CheckpointStore store(spec.job_dir / "checkpoints");
  const json data_version = {{"file", fs::absolute(spec.dataset).string()},
                             {"rows", dataset.size()},
                             {"tombstoned", dataset.tombstoned_count()},
                             {"dataset_seed", dataset.layout().seed}};
  S3TRunReport report;
  const auto jobs = jobs_for_rank(spec.shards, spec.sequences, comm.rank(), comm.size());
  report.jobs = static_cast<int>(jobs.size());
  // Prefix steps of this rank's jobs; resumed ones count as they are skipped.
  storage::ProgressTask progress("s3t", static_cast<std::int64_t>(jobs.size()) * spec.slices, "steps");
  try {
    std::size_t j = 0;
    while (j < jobs.size()) {
      const int shard = jobs[j].first;
      const auto& records = shard_records[static_cast<std::size_t>(shard)];
      std::optional<RecordTensors> data;
      std::optional<ActivationCache> cache;
      for (; j < jobs.size() && jobs[j].first == shard; ++j) {
        const int sequence = jobs[j].second;
        const auto name = series_name(shard, sequence);
        const auto& order = orders[static_cast<std::size_t>(sequence)];
        const auto committed = committed_prefixes(store, name);
        if (!committed.empty() && !resume) {
          throw std::runtime_error("rank " + std::to_string(comm.rank()) + ": checkpoint series " +
                                   (store.root() / name).string() + " already exists; pass --resume or use an empty job_dir");
        }
        std::optional<PrefixState> resume_state;
        if (!committed.empty()) {
          const auto& last = committed.rbegin()->second;
          try {
            resume_state = from_checkpoint(store.load(name, last.version));
          } catch (const std::exception& e) {
            throw std::runtime_error("rank " + std::to_string(comm.rank()) + ": resuming shard " + std::to_string(shard) +
                                     " sequence " + std::to_string(sequence) + " from " + last.path.string() +
                                     " failed: " + e.what() +
                                     ". Committed checkpoints were left untouched; purge that series (or its newest "
                                     "version) to retrain it, then --resume again");
          }
          report.steps_resumed += resume_state->prefix;
          progress.advance(resume_state->prefix);
          if (resume_state->prefix >= spec.slices) continue;
        }
        if (!data) {
          data = read_records(dataset, records.rows, model_config);
          prototype->to(device);
          const auto t0 = std::chrono::steady_clock::now();
          cache = ActivationCache::build(*prototype, data->inputs, spec.cache_batch_size);
          report.cache_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          spdlog::info("shard {}: {} records, activation cache {:.1f} MiB", shard, records.rows.size(),
                       static_cast<double>(cache->bytes()) / (1 << 20));
        }
        LetheModel model(model_config, 0);
        model.copy_backbone_and_head_from(*prototype);
        model.to(device);
        const auto job_seed = mix_seed(spec.seed, 10, static_cast<std::uint64_t>(shard), static_cast<std::uint64_t>(sequence));
        S3TTrainer trainer(model, StepOptions{spec.epochs, spec.batch_size, spec.learning_rate});
        const auto stats = trainer.train_sequence(
            *cache, data->labels, records.slice_of_record, order, job_seed, resume_state ? &*resume_state : nullptr,
            [&](const PrefixState& state) {
              const int i = state.prefix;
              const auto indices = S3TTrainer::prefix_records(records.slice_of_record, order, i);
              const json metadata = {
                  {"kind", "s3t-prefix"},
                  {"shard", shard},
                  {"sequence", sequence},
                  {"prefix", i},
                  {"slices", std::vector<int>(order.begin(), order.begin() + i)},
                  {"order", order},
                  {"records", indices.size()},
                  {"records_digest", records_digest(dataset, records.rows, indices)},
                  {"data_version", data_version},
                  {"seeds", {{"job", spec.seed}, {"sequence", job_seed}, {"adapter", mix_seed(job_seed, 1, i)},
                             {"step", mix_seed(job_seed, 2, i)}}},
                  {"training", {{"epochs", spec.epochs}, {"batch_size", spec.batch_size}, {"learning_rate", spec.learning_rate}}},
                  {"config_digest", spec.config_digest}};
              const auto info = store.write(name, to_tensor_data(state), metadata);
              spdlog::info("{}: committed P_{} (version {}, digest {})", name, i, info.version, info.digest.substr(0, 16));
              ++report.steps_trained;
              progress.advance(1);
            });
        report.samples += stats.samples;
        report.train_seconds += stats.seconds;
      }
    }
    error.clear();
  } catch (const std::exception& e) {
    error = e.what();
  }
  agree_on_failure(comm, error, "training");

  std::int64_t total = report.samples;
  comm.allreduce({&total, 1, comm::DataType::kInt64}, comm::ReduceOp::kSum);
  report.total_samples = total;
  if (comm.rank() == 0) {
    try {
      (void)finish_manifest(spec, store, options.before_manifest_commit);
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  agree_on_failure(comm, error, "writing the manifest");
  report.digests = json::object();
  for (int k = 0; k < spec.shards; ++k) {
    for (int b = 0; b < spec.sequences; ++b) {
      json list = json::array();
      for (const auto& [prefix, info] : committed_prefixes(store, series_name(k, b))) list.push_back(info.digest);
      report.digests[series_name(k, b)] = list;
    }
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

S3TServing load_s3t_serving(const fs::path& job_dir, const json& manifest) {
  S3TServing serving;
  serving.shards = json::array();
  if (!manifest.contains("shards") || manifest.at("shards").empty()) return serving;
  const storage::CheckpointStore store(job_dir / manifest.value("checkpoints", "checkpoints"));
  for (const auto& shard : manifest.at("shards")) {
    const int k = shard.at("shard").get<int>();
    const auto plan = shard_plan_from_json(shard.at("plan"), "manifest.shards[" + std::to_string(k) + "].plan");
    const auto choice = serving_choice(plan);
    if (!choice) {
      serving.shards.push_back({{"shard", k}, {"sequence", nullptr}, {"depth", 0}});
      continue;
    }
    const auto name = series_name(k, choice->sequence);
    const auto committed = committed_prefixes(store, name);
    const auto it = committed.find(choice->depth);
    if (it == committed.end()) {
      throw storage::StorageError(name + ": the plan serves prefix " + std::to_string(choice->depth) +
                                  " but no committed checkpoint holds it; the job directory is inconsistent");
    }
    serving.members.push_back({k, choice->sequence, from_checkpoint(store.load(name, it->second.version))});
    serving.shards.push_back({{"shard", k}, {"sequence", choice->sequence}, {"depth", choice->depth}});
  }
  return serving;
}

EvalResult evaluate_job(const fs::path& job_dir, const fs::path& data) {
  const auto manifest_file = job_manifest_path(job_dir);
  if (!fs::exists(manifest_file)) {
    throw std::runtime_error(job_dir.string() + " is not a trained job directory (no manifest.json); run `lethe train` first");
  }
  const auto manifest = read_json_file(manifest_file);
  if (manifest.value("format", "") != kManifestFormat) throw std::runtime_error(manifest_file.string() + " is not an S3T job manifest");
  auto data_path = data;
  if (data_path.empty()) {
    const auto test = manifest.at("config").value("test_dataset", "");
    if (test.empty()) throw std::invalid_argument("no evaluation data: pass --data FILE or set test_dataset in the job config");
    data_path = test;
  }
  const auto model_config = model_config_from_json(manifest.at("model"));
  LetheModel model(model_config, 0);
  load_backbone(model, job_dir / manifest.value("backbone", "backbone.h5"));
  const auto dataset = storage::Dataset::open(data_path);
  const auto records = read_records(dataset, dataset.select(storage::RecordFilter{}), model_config);
  const bool has_s3t = manifest.contains("shards") && !manifest.at("shards").empty();
  const bool has_noisy_gd = manifest.contains("noisy_gd");
  if (!has_s3t && !has_noisy_gd)
    throw std::runtime_error(manifest_file.string() + " names no trained model; run `lethe train` on the job first");
  EvalResult result;
  result.records = records.labels.size(0);
  result.models = json::array();
  if (has_s3t) {
    const auto serving = load_s3t_serving(job_dir, manifest);
    const auto probabilities = ensemble_probabilities(model, serving.members, records.inputs, 1024);
    result.accuracy = accuracy(probabilities, records.labels);
    result.models.push_back({{"name", "s3t"}, {"accuracy", result.accuracy}, {"live_shards", serving.members.size()},
                             {"shards", serving.shards}});
  }
  if (has_noisy_gd) {
    result.models.push_back(evaluate_noisy_gd(job_dir, manifest, model, records.inputs, records.labels));
    if (!has_s3t) result.accuracy = result.models.back().at("accuracy").get<double>();
  }
  return result;
}

}  // namespace lethe::trainer
