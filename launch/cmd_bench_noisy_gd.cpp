// `lethe bench noisy-gd --job DIR`: a trained job's noisy-GD model (DESIGN.md §4) measured in one run:
// test accuracy, training time on all ranks against rank 0 alone (speed-up), the wall time of
// deleting d records (K_U noisy steps) against retraining from scratch, and one noisy step on rank
// 0 alone against one read pass over the same feature bytes (the memory floor); run it under
// mpirun -np N.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "launch/command_registry.h"
#include "storage/dataset.h"
#include "trainer/compute_threads.h"
#include "trainer/frozen_backbone.h"
#include "trainer/job.h"
#include "trainer/model.h"
#include "trainer/noisy_gd_job.h"
#include "trainer/pretrain.h"

namespace lethe::launch {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using trainer::LocalData;
using trainer::NoisyGdModel;

struct BenchNoisyGdArgs {
  std::string job;
  std::string data;  // test records; default: the job config's test_dataset
  std::vector<std::int64_t> deletions{1, 100};
  int repetitions = 1;
  std::string json_path;
  std::string backend = "mpi";
};

// The slowest rank's time of `body`, which every rank runs (collectives inside included).
template <typename Body>
double timed(comm::Communicator& comm, Body&& body) {
  comm.barrier();
  const auto start = std::chrono::steady_clock::now();
  body();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  comm.allreduce({&seconds, 1, comm::DataType::kFloat64}, comm::ReduceOp::kMax);
  return seconds;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

// The records of `whole` (every block) in rank `rank`'s blocks of `world`, as load_noisy_gd_share cuts them.
LocalData blocks_of(const trainer::NoisyGdShare& whole, int rank, int world) {
  std::vector<std::int64_t> keep;
  std::vector<std::uint64_t> rows;
  for (std::size_t i = 0; i < whole.rows.size(); ++i) {
    if ((whole.rows[i] / trainer::kNoisyGdBlockRows) % static_cast<std::uint64_t>(world) == static_cast<std::uint64_t>(rank)) {
      keep.push_back(static_cast<std::int64_t>(i));
      rows.push_back(whole.rows[i]);
    }
  }
  const auto index = torch::tensor(keep, torch::kInt64);
  return {whole.data.features.index_select(0, index).contiguous(), whole.data.labels.index_select(0, index).contiguous(),
          trainer::noisy_gd_block_ends(rows)};
}

// Steps timed for step_ms, and read passes for read_pass_ms (after 2 untimed ones each).
constexpr int kTimedSteps = 25;

// Milliseconds of `body`, median of kTimedSteps runs after 2 warm-up runs.
template <typename Body>
double median_ms(Body&& body) {
  for (int k = 0; k < 2; ++k) body();
  std::vector<double> ms;
  for (int k = 0; k < kTimedSteps; ++k) {
    const auto start = std::chrono::steady_clock::now();
    body();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return median(ms);
}

// One read pass over `features` (float64, contiguous): every byte loaded once, into eight
// independent sums so that the loop waits on memory, not on the adder.
double read_pass(const at::Tensor& features) {
  const double* x = features.data_ptr<double>();
  const std::int64_t count = features.numel();
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += x[i + k];
  for (; i < count; ++i) s[0] += x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// One noisy step on rank 0 alone over every record (`whole`), with the job's threads, against the
// memory floor: one read pass over the same feature bytes, the fastest of a plain loop and
// torch::sum, each the median of kTimedSteps passes.
json step_against_floor(const trainer::JobManifest& manifest, const trainer::NoisyGdConfig& config, bool same_data,
                        const LocalData& whole, comm::Communicator& solo) {
  // The committed model where it was trained on these records (the weights a deletion starts
  // from); else one step from 0 on them (a step costs the same for any weights).
  std::optional<NoisyGdModel> stepper;
  if (same_data) {
    stepper.emplace(trainer::load_noisy_gd_model(manifest, solo));
  } else {
    trainer::NoisyGdConfig one_step = config;
    one_step.settings.train_steps = 1;
    stepper.emplace(one_step, solo);
    stepper->train(whole);
  }
  const double step_ms = median_ms([&] { stepper->continue_training(whole, 1); });
  const at::Tensor features = whole.features.contiguous();
  volatile double sink = 0;
  const double loop_ms = median_ms([&] { sink = sink + read_pass(features); });
  const double torch_ms = median_ms([&] { sink = sink + features.sum().item<double>(); });
  const double read_ms = std::min(loop_ms, torch_ms);
  return {{"step_ms", step_ms},
          {"read_pass_ms", read_ms},
          {"step_over_read", step_ms / read_ms},
          {"read_pass", {{"loop_ms", loop_ms}, {"torch_sum_ms", torch_ms}}},
          {"records", whole.labels.size(0)},
          {"feature_bytes", features.numel() * static_cast<std::int64_t>(sizeof(double))},
          {"blocks", whole.block_ends.size()},
          {"threads", manifest.config.threads},
          {"timed_steps", kTimedSteps},
          {"blas", trainer::blas_name()}};
}

// The ids of `deleted` records spread evenly over the live training records in row order (every
// (n / deleted)-th from the first): the same on every rank.
std::vector<std::string> spread_ids(const storage::Dataset& dataset, std::int64_t deleted) {
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::exclude;
  const auto live = dataset.select(filter);
  const auto stride = static_cast<std::size_t>(static_cast<std::int64_t>(live.size()) / deleted);
  std::vector<std::string> ids;
  for (std::size_t k = 0; k < live.size() && static_cast<std::int64_t>(ids.size()) < deleted; k += stride)
    ids.emplace_back(dataset.id(live[k]));
  return ids;
}

// The 1-minute load average (Linux), to read timings of a shared machine by; -1 where unknown.
double load_average() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

double test_accuracy(const NoisyGdModel& model, const LocalData& test) {
  if (test.labels.size(0) == 0) return 0.0;
  return model.predict(test.features).eq(test.labels).to(torch::kFloat64).mean().item<double>();
}

// The test records through the job's backbone (rank 0 only).
LocalData test_data(const trainer::JobManifest& manifest, trainer::FrozenBackbone& backbone, const std::string& data_arg) {
  fs::path path = data_arg.empty() ? manifest.config.test_dataset : fs::path(data_arg);
  if (path.empty()) throw std::invalid_argument("no test data: pass --data FILE or set test_dataset in the job config");
  const auto dataset = storage::Dataset::open(path);
  const auto records = trainer::read_records(dataset, dataset.select(storage::RecordFilter{}), backbone.config());
  LocalData test{{}, records.labels};
  backbone.use([&](trainer::LetheModel& model) { test.features = trainer::noisy_gd_features(model, records.inputs, 1024); });
  return test;
}

void run(const BenchNoisyGdArgs& args) {
  if (args.repetitions < 1) throw std::invalid_argument("--repetitions must be at least 1");
  for (const auto d : args.deletions)
    if (d < 1) throw std::invalid_argument("--deletions: every count must be at least 1");
  auto comm = comm::make_communicator(args.backend);
  const double load_before = load_average();
  const int rank = comm->rank();
  const int world = comm->size();
  const fs::path job = args.job;
  const auto manifest = trainer::open_trained_job(job, *comm);
  const NoisyGdModel committed = trainer::load_noisy_gd_model(manifest, *comm);
  const trainer::NoisyGdConfig config = committed.config();
  trainer::set_compute_threads(manifest.config.threads);
  trainer::FrozenBackbone backbone(manifest.model, manifest.backbone_path(), manifest.trunk_path(), manifest.config.device);
  const auto dataset = storage::Dataset::open(manifest.dataset.path);

  // Rank 0 holds every record for the one-rank runs; its share of the world is its blocks of them.
  auto solo = comm->split(rank == 0 ? 0 : -1, 0);
  trainer::NoisyGdShare whole;
  trainer::NoisyGdShare mine;
  LocalData share;
  const double feature_seconds = timed(*comm, [&] {
    if (rank == 0) {
      whole = trainer::load_noisy_gd_share(dataset, backbone, {}, *solo);
      share = blocks_of(whole, 0, world);
    } else {
      mine = trainer::load_noisy_gd_share(dataset, backbone, {}, *comm);
      share = mine.data;
    }
  });
  if (rank == 0) {
    // Rank 0's own share, with ids and rows, for the deletions below.
    mine.data = share;
    for (std::size_t i = 0; i < whole.rows.size(); ++i) {
      if ((whole.rows[i] / trainer::kNoisyGdBlockRows) % static_cast<std::uint64_t>(world) == 0) {
        mine.ids.push_back(whole.ids[i]);
        mine.rows.push_back(whole.rows[i]);
      }
    }
  }
  std::int64_t n = share.labels.size(0);
  comm->allreduce({&n, 1, comm::DataType::kInt64}, comm::ReduceOp::kSum);
  if (n < 2) throw std::invalid_argument(job.string() + ": the noisy-GD training set has " + std::to_string(n) + " records");
  for (const auto d : args.deletions)
    if (d >= n) throw std::invalid_argument("--deletions: " + std::to_string(d) + " is not below n = " + std::to_string(n));
  LocalData test;
  if (rank == 0) test = test_data(manifest, backbone, args.data);

  // Training from scratch on all ranks and on rank 0 alone, alternately; the weights must agree
  // with each other and, on unchanged data, with the committed model.
  int wrong = 0;
  std::vector<double> world_seconds, solo_seconds;
  std::optional<NoisyGdModel> trained;
  for (int rep = 0; rep < args.repetitions; ++rep) {
    NoisyGdModel model(config, *comm);
    world_seconds.push_back(timed(*comm, [&] { model.train(share); }));
    if (world > 1) {
      double seconds = 0;
      if (rank == 0) {
        NoisyGdModel alone(config, *solo);
        const auto start = std::chrono::steady_clock::now();
        alone.train(whole.data);
        seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        wrong += torch::equal(alone.weights(), model.weights()) ? 0 : 1;
      }
      comm->allreduce({&seconds, 1, comm::DataType::kFloat64}, comm::ReduceOp::kMax);
      solo_seconds.push_back(seconds);
    }
    trained.emplace(std::move(model));
  }
  const bool same_data = n == committed.accountant().current_n();
  if (same_data && rank == 0) wrong += torch::equal(trained->weights(), committed.weights()) ? 0 : 1;
  const double accuracy = rank == 0 ? test_accuracy(*trained, test) : 0.0;

  json deletions = json::array();
  for (const auto d : args.deletions) {
    const LocalData remaining = trainer::without(mine, spread_ids(dataset, d)).data;
    NoisyGdModel model = trainer::load_noisy_gd_model(manifest, *comm);
    if (!same_data) model = *trained;  // the data changed since training: start from this run's model
    trainer::DeletionReceipt receipt;
    const double delete_seconds = timed(*comm, [&] { receipt = model.delete_records(remaining); });
    NoisyGdModel retrained(config, *comm);
    const double retrain_seconds = timed(*comm, [&] { retrained.train(remaining); });
    deletions.push_back({{"deleted", d},
                         {"route", receipt.retrained ? "retrain" : "noisy_steps"},
                         {"unlearning_steps", receipt.unlearning_steps},
                         {"steps_run", receipt.steps_run},
                         {"epsilon", receipt.epsilon},
                         {"delta", receipt.delta},
                         {"delete_seconds", delete_seconds},
                         {"retrain_seconds", retrain_seconds},
                         {"speedup", retrain_seconds / delete_seconds},
                         {"accuracy_after_delete", rank == 0 ? test_accuracy(model, test) : 0.0},
                         {"accuracy_retrained", rank == 0 ? test_accuracy(retrained, test) : 0.0}});
  }
  comm->allreduce({&wrong, 1, comm::DataType::kInt32}, comm::ReduceOp::kSum);
  if (rank != 0) return;
  // Last, on rank 0 alone: the other ranks are done (2 ranks on 2 cores leave it a core).
  const json step = step_against_floor(manifest, config, same_data, whole.data, *solo);
  const double load_after = load_average();

  const auto& p = config.settings.params;
  const double t_world = median(world_seconds);
  json out = {{"job_dir", job.string()},
              {"ranks", world},
              {"records", n},
              {"features", config.num_features},
              {"classes", config.num_classes},
              {"params", {{"lambda", p.lambda}, {"eta", p.eta}, {"sigma", p.sigma}, {"clip", p.clip}}},
              {"train_steps", config.settings.train_steps},
              {"target_epsilon", config.settings.target_epsilon},
              {"delta", committed.accountant().delta()},
              {"test_records", test.labels.size(0)},
              {"test_accuracy", accuracy},
              {"feature_seconds", feature_seconds},
              {"train_seconds", {{"ranks", world}, {"all", world_seconds}, {"median", t_world}}},
              {"deletions", deletions},
              {"wrong", wrong},
              {"step_ms", step.at("step_ms")},
              {"read_pass_ms", step.at("read_pass_ms")},
              {"step_over_read_pass", step.at("step_over_read")},
              {"blas", step.at("blas")},
              {"step", step},
              {"load_average", {{"before", load_before}, {"after", load_after}}}};
  std::printf("# lethe bench noisy-gd: %s, %d rank(s), n = %lld records, %lld features, %lld classes\n",
              job.string().c_str(), world, static_cast<long long>(n), static_cast<long long>(config.num_features),
              static_cast<long long>(config.num_classes));
  std::printf("# lambda %g, eta %g, sigma %g, clip %g, %lld training steps; each deletion certifies epsilon %g, delta %.3g\n",
              p.lambda, p.eta, p.sigma, p.clip, static_cast<long long>(config.settings.train_steps), config.settings.target_epsilon,
              committed.accountant().delta());
  std::printf("# test accuracy %.4f on %lld records; features (backbone pass) %.1f s; load average %.2f before, %.2f after\n#\n",
              accuracy, static_cast<long long>(test.labels.size(0)), feature_seconds, load_before, load_after);
  std::printf("# training from scratch (all ranks, then rank 0 alone, alternately), median of %d runs\n", args.repetitions);
  std::printf("%8s %10s %9s\n", "ranks", "train_s", "speedup");
  if (world > 1) {
    const double t_solo = median(solo_seconds);
    std::printf("%8d %10.2f %9s\n", 1, t_solo, "1.00");
    std::printf("%8d %10.2f %8.2fx\n", world, t_world, t_solo / t_world);
    out["train_seconds"]["one_rank"] = {{"all", solo_seconds}, {"median", t_solo}};
    out["speedup"] = t_solo / t_world;
  } else {
    std::printf("%8d %10.2f %9s\n", world, t_world, "-");
  }
  std::printf("#\n# one deletion (K_U noisy steps, or a retrain when cheaper) against retraining from scratch, %d rank(s)\n",
              world);
  std::printf("%8s %12s %6s %9s %10s %11s %9s %10s %10s\n", "deleted", "route", "K_U", "epsilon", "delete_s",
              "retrain_s", "speedup", "acc_del", "acc_retr");
  for (const auto& d : deletions)
    std::printf("%8lld %12s %6lld %9.4f %10.3f %11.2f %8.1fx %10.4f %10.4f\n", d.at("deleted").get<long long>(),
                d.at("route").get<std::string>().c_str(), d.at("unlearning_steps").get<long long>(),
                d.at("epsilon").get<double>(), d.at("delete_seconds").get<double>(),
                d.at("retrain_seconds").get<double>(), d.at("speedup").get<double>(),
                d.at("accuracy_after_delete").get<double>(), d.at("accuracy_retrained").get<double>());
  std::printf("# #wrong: %d (models trained on 1 and %d ranks%s that differ in any bit)\n", wrong, world,
              same_data ? " and the committed model" : "");
  std::printf("#\n# one noisy step on rank 0 alone (%lld records, %d thread(s), %s) against one read pass over its\n"
              "# %.1f MB of features (the memory floor), median of %d each\n",
              static_cast<long long>(step.at("records").get<std::int64_t>()), manifest.config.threads,
              step.at("blas").get<std::string>().c_str(), step.at("feature_bytes").get<double>() / 1e6, kTimedSteps);
  std::printf("%10s %14s %10s\n", "step_ms", "read_pass_ms", "ratio");
  std::printf("%10.2f %14.2f %9.2fx\n", step.at("step_ms").get<double>(), step.at("read_pass_ms").get<double>(),
              step.at("step_over_read").get<double>());
  std::fflush(stdout);
  if (!args.json_path.empty()) {
    std::ofstream file(args.json_path);
    if (!file) throw std::runtime_error("--json: cannot write " + args.json_path);
    file << out.dump(2) << "\n";
  }
}

void install(CLI::App& app) {
  CLI::App& bench_group = subcommand_group(app, "bench", "Benchmarks; results and commands in docs/BENCHMARKS.md");
  auto args = std::make_shared<BenchNoisyGdArgs>();
  CLI::App* command = bench_group.add_subcommand(
      "noisy-gd", "A job's noisy-GD model: accuracy, training speed-up over ranks, deletion vs retraining time");
  command->footer(
      "Example (bench/noisy_gd/run.sh does all of it on Fashion-MNIST):\n"
      "  mpirun -np 2 lethe train --config launch/examples/fashion_noisy_gd.yaml\n"
      "  mpirun -np 2 lethe bench noisy-gd --job runs/fashion-noisy-gd --deletions 1,100 --json noisy_gd.json");
  command->add_option("--job", args->job, "Job directory with a trained noisy-GD model (`lethe train`)")->required();
  command->add_option("--data", args->data, "Test dataset for accuracy (default: the config's test_dataset)");
  command->add_option("--deletions", args->deletions, "Numbers of records to delete at once, each timed")
      ->delimiter(',')
      ->capture_default_str();
  command->add_option("--repetitions", args->repetitions, "Training runs per rank count (median reported)")
      ->capture_default_str();
  command->add_option("--json", args->json_path, "Also write the results as JSON to this file (rank 0)");
  command->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  command->callback([args] { run(*args); });
}

const CommandRegistration registration{92, install};

}  // namespace
}  // namespace lethe::launch
