#include "trainer/s3t_job.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <unordered_set>

#include "comm/agree.h"
#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/hashing.h"
#include "storage/progress.h"
#include "trainer/activation_cache.h"
#include "trainer/compute_threads.h"
#include "trainer/error.h"
#include "trainer/job.h"
#include "trainer/pretrain.h"
#include "trainer/s3t_state.h"
#include "trainer/s3t_trainer.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

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

S3TSection initial_section(const JobSettings& settings, const std::vector<SliceOrder>& orders) {
  S3TSection section;
  for (int k = 0; k < settings.s3t.shards; ++k) {
    S3TShard shard{k, make_shard_plan(settings.s3t.slices, orders, 0), {}};
    for (int b = 0; b < settings.s3t.sequences; ++b) shard.series.push_back({b, series_name(k, b), {}});
    section.shards.push_back(std::move(shard));
  }
  return section;
}

// Every series' committed prefixes (or only those of `only`), and each plan's surviving prefix
// accordingly.
void record_committed_prefixes(S3TSection& section, const storage::CheckpointStore& store,
                               const std::vector<std::pair<int, int>>& only) {
  for (auto& shard : section.shards) {
    for (auto& series : shard.series) {
      if (!only.empty() && std::find(only.begin(), only.end(), std::pair(shard.shard, series.sequence)) == only.end()) continue;
      series.prefixes.clear();
      int depth = 0;
      for (const auto& [prefix, info] : committed_prefixes(store, series.name)) {
        series.prefixes.push_back({prefix, info.version, info.digest});
        if (prefix == depth + 1) depth = prefix;
      }
      shard.plan.sequences[static_cast<std::size_t>(series.sequence)].surviving_prefix = depth;
    }
  }
}

}  // namespace

PrefixState load_prefix(const storage::CheckpointStore& store, const std::string& series, const PrefixCheckpoint& expected) {
  const auto checkpoint = store.load(series, expected.version);
  if (checkpoint.info.digest != expected.digest) {
    throw TrainerError(ErrorKind::kMismatch,
                       checkpoint.info.path.string() + ": P_" + std::to_string(expected.prefix) + " of " + series +
                           " has digest " + checkpoint.info.digest.substr(0, 16) + "…, but the job's manifest records " +
                           expected.digest.substr(0, 16) +
                           "…: the checkpoint was replaced. Restore the job directory from a backup, or retrain");
  }
  return from_checkpoint(checkpoint);
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

std::vector<ShardRecords> assign_records(const storage::Dataset& dataset, const JobSettings& settings,
                                         std::span<const std::uint64_t> exclude) {
  const auto& s3t = settings.s3t;
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;
  std::vector<ShardRecords> shards(static_cast<std::size_t>(s3t.shards));
  const std::unordered_set<std::uint64_t> excluded(exclude.begin(), exclude.end());
  auto rows = dataset.select(filter);
  std::erase_if(rows, [&](std::uint64_t row) { return excluded.count(row) != 0; });
  for (const auto row : rows) {
    const auto a = dataset.assigner().assign(dataset.id(row), s3t.shards, s3t.slices);
    auto& shard = shards[static_cast<std::size_t>(a.shard)];
    shard.rows.push_back(row);
    shard.slice_of_record.push_back(a.slice);
  }
  for (int k = 0; k < s3t.shards; ++k) {
    std::vector<int> counts(static_cast<std::size_t>(s3t.slices), 0);
    for (const auto s : shards[static_cast<std::size_t>(k)].slice_of_record) ++counts[static_cast<std::size_t>(s)];
    for (int s = 0; s < s3t.slices; ++s) {
      if (counts[static_cast<std::size_t>(s)] == 0) {
        throw TrainerError(ErrorKind::kInvalidInput,
                           settings.source.string() + ": s3t.slices: shard " + std::to_string(k) + " slice " +
                               std::to_string(s) + " has no records (" + std::to_string(rows.size()) +
                               " non-public records in " + dataset.path().string() + " for " + std::to_string(s3t.shards) +
                               " shards x " + std::to_string(s3t.slices) + " slices); lower s3t.shards or s3t.slices");
      }
    }
  }
  return shards;
}

S3TRunReport run_s3t_job(const JobSettings& settings, comm::Communicator& comm, const S3TRunOptions& options) {
  const bool resume = options.resume;
  const auto start = std::chrono::steady_clock::now();
  const auto& s3t = settings.s3t;
  const auto dataset = open_job_dataset(settings);
  set_compute_threads(settings.threads);
  const torch::Device device(settings.device == "cuda" ? torch::kCUDA : torch::kCPU);
  const ModelConfig model_config = job_model_config(settings, dataset);
  const auto shard_records = assign_records(dataset, settings, options.exclude_rows);
  const auto orders = select_sequences(s3t.selection, s3t.slices, s3t.sequences, s3t.deletion_probabilities, s3t.horizon);

  // Check the backbone against the config before anything is written.
  auto prototype = std::make_shared<LetheModel>(model_config, 0);
  load_backbone(*prototype, settings.backbone);
  if (model_config.trunk) prototype->attach_trunk(load_job_trunk(settings, model_config));

  std::string checkpoints;
  comm::on_root(comm, "adding the S3T section to the manifest", [&] {
    auto manifest = read_job_manifest(settings.job_dir);
    checkpoints = manifest.checkpoints_path().string();
    if (manifest.section(kS3TRouteName) != nullptr) return;
    manifest.routes[kS3TRouteName] = encode_s3t_section(initial_section(settings, orders));
    commit_job_manifest(manifest);
  });
  storage::CheckpointStore store(comm::broadcast_string(comm, checkpoints));

  const json data_version = {{"file", fs::absolute(settings.dataset).string()},
                             {"rows", dataset.size()},
                             {"tombstoned", dataset.tombstoned_count()},
                             {"dataset_seed", dataset.layout().seed}};
  S3TRunReport report;
  auto jobs = jobs_for_rank(s3t.shards, s3t.sequences, comm.rank(), comm.size());
  if (options.retrain_series) {
    std::erase_if(jobs, [&](const auto& job) { return std::find(options.only.begin(), options.only.end(), job) == options.only.end(); });
  }
  const auto name_of = [&](int shard, int sequence) {
    return options.retrain_series ? options.retrain_series(shard, sequence) : series_name(shard, sequence);
  };
  report.jobs = static_cast<int>(jobs.size());
  const auto digest = config_digest(settings);
  const auto& optimizer = settings.training.optimizer;
  // Prefix steps of this rank's jobs; resumed ones count as they are skipped.
  storage::ProgressTask progress("s3t", static_cast<std::int64_t>(jobs.size()) * s3t.slices, "steps");
  comm::on_every_rank(comm, "training", [&] {
    std::size_t j = 0;
    while (j < jobs.size()) {
      const int shard = jobs[j].first;
      const auto& records = shard_records[static_cast<std::size_t>(shard)];
      std::optional<RecordTensors> data;
      std::optional<ActivationCache> cache;
      for (; j < jobs.size() && jobs[j].first == shard; ++j) {
        const int sequence = jobs[j].second;
        const auto name = name_of(shard, sequence);
        const auto& order = orders[static_cast<std::size_t>(sequence)];
        const auto committed = committed_prefixes(store, name);
        if (!committed.empty() && !resume) {
          throw TrainerError(ErrorKind::kInvalidInput, "rank " + std::to_string(comm.rank()) + ": checkpoint series " +
                                                           (store.root() / name).string() +
                                                           " already exists; pass --resume or use an empty job_dir");
        }
        std::optional<PrefixState> resume_state;
        if (!committed.empty()) {
          const auto& last = committed.rbegin()->second;
          try {
            resume_state = from_checkpoint(store.load(name, last.version));
          } catch (const std::exception& e) {
            throw TrainerError(ErrorKind::kDamaged,
                               "rank " + std::to_string(comm.rank()) + ": resuming shard " + std::to_string(shard) +
                                   " sequence " + std::to_string(sequence) + " from " + last.path.string() + " failed: " +
                                   e.what() +
                                   ". Committed checkpoints were left untouched; purge that series (or its newest "
                                   "version) to retrain it, then --resume again");
          }
          report.steps_resumed += resume_state->prefix;
          progress.advance(resume_state->prefix);
          if (resume_state->prefix >= s3t.slices) continue;
        }
        if (!data) {
          data = read_records(dataset, records.rows, model_config);
          prototype->to(device);
          const auto t0 = std::chrono::steady_clock::now();
          cache = ActivationCache::build(*prototype, data->inputs, settings.training.cache_batch_size);
          report.cache_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          spdlog::info("shard {}: {} records, activation cache {:.1f} MiB", shard, records.rows.size(),
                       static_cast<double>(cache->bytes()) / (1 << 20));
        }
        LetheModel model(model_config, 0);
        model.copy_backbone_and_head_from(*prototype);
        model.to(device);
        const auto job_seed = mix_seed(settings.seed, 10, static_cast<std::uint64_t>(shard), static_cast<std::uint64_t>(sequence));
        S3TTrainer trainer(model, optimizer);
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
                  {"seeds", {{"job", settings.seed}, {"sequence", job_seed}, {"adapter", mix_seed(job_seed, 1, i)},
                             {"step", mix_seed(job_seed, 2, i)}}},
                  {"training", {{"epochs", optimizer.epochs}, {"batch_size", optimizer.batch_size},
                                {"learning_rate", optimizer.learning_rate}}},
                  {"config_digest", digest}};
              const auto info = store.write(name, to_tensor_data(state), metadata);
              spdlog::info("{}: committed P_{} (version {}, digest {})", name, i, info.version, info.digest.substr(0, 16));
              ++report.steps_trained;
              progress.advance(1);
            });
        report.samples += stats.samples;
        report.train_seconds += stats.seconds;
      }
    }
  });

  std::int64_t total = report.samples;
  comm.allreduce({&total, 1, comm::DataType::kInt64}, comm::ReduceOp::kSum);
  report.total_samples = total;
  comm::on_root(comm, "writing the manifest", [&] {
    if (options.retrained != nullptr) {
      // A retrain: its snapshot's section (the manifest may have changed meanwhile) with the
      // retrained sequences' new series; nothing committed.
      auto& section = *options.retrained;
      for (const auto& [k, b] : options.only) {
        section.shards.at(static_cast<std::size_t>(k)).series.at(static_cast<std::size_t>(b)).name = name_of(k, b);
      }
      record_committed_prefixes(section, store, options.only);
      return;
    }
    auto manifest = read_job_manifest(settings.job_dir);
    auto section = decode_s3t_section(*manifest.section(kS3TRouteName), manifest.path().string());
    record_committed_prefixes(section, store, {});
    manifest.routes[kS3TRouteName] = encode_s3t_section(section);
    commit_job_manifest(manifest);
  });
  report.digests = json::object();
  for (int k = 0; k < s3t.shards; ++k) {
    for (int b = 0; b < s3t.sequences; ++b) {
      if (options.retrain_series && std::find(options.only.begin(), options.only.end(), std::pair(k, b)) == options.only.end()) continue;
      json list = json::array();
      for (const auto& [prefix, info] : committed_prefixes(store, name_of(k, b))) list.push_back(info.digest);
      report.digests[name_of(k, b)] = list;
    }
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace lethe::trainer
