// `lethe bench capacity --job DIR`: how many uniform deletions a trained S3T job absorbs before every
// shard is dead, simulated on the job's own sequences and set against m·L·H(m·min(B,L)) (DESIGN.md §3).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "launch/command_registry.h"
#include "trainer/capacity.h"
#include "trainer/error.h"
#include "trainer/job_manifest.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_state.h"

namespace lethe::launch {
namespace {

struct BenchCapacityArgs {
  std::string job;
  int trials = 2000;
  std::uint64_t seed = 1;
};

// Each shard's trained sequences, at full depth: the capacity of the job as trained, whatever
// deletions it has absorbed since. `selection` names how they were chosen.
std::vector<trainer::ShardPlan> trained_plans(const std::filesystem::path& job_dir, std::string& selection) {
  const auto file = trainer::job_manifest_path(job_dir).string();
  trainer::JobManifest manifest;
  try {
    manifest = trainer::read_job_manifest(job_dir);
  } catch (const trainer::TrainerError& e) {
    if (e.kind() != trainer::ErrorKind::kDamaged) throw;
    throw std::invalid_argument(file + " is not an S3T job manifest: " + e.what());
  }
  const auto* section = manifest.section(trainer::kS3TRouteName);
  if (section == nullptr) {
    throw std::invalid_argument(file + " is not an S3T job manifest (the job has no S3T model); pass a directory written "
                                       "by `lethe train` with s3t enabled");
  }
  selection = std::string(trainer::to_string(manifest.config.s3t.selection));
  std::vector<trainer::ShardPlan> plans;
  for (auto& shard : trainer::decode_s3t_section(*section, file).shards) {
    for (auto& sequence : shard.plan.sequences) sequence.surviving_prefix = shard.plan.slices;
    plans.push_back(std::move(shard.plan));
  }
  return plans;
}

void run(const BenchCapacityArgs& args) {
  if (args.trials < 1) throw std::invalid_argument("--trials " + std::to_string(args.trials) + ": give at least 1 trial");
  std::string selection;
  const auto plans = trained_plans(args.job, selection);
  const auto result = trainer::simulate_capacity(plans, args.trials, args.seed);
  const double half = result.ci95_half_width();
  const double ratio = result.mean_deletions / result.formula;

  std::printf("# lethe bench capacity: %s, %d shards x %d slices x %d sequences (%s)\n", args.job.c_str(), result.shards,
              result.slices, result.budget, selection.c_str());
  std::printf("# each deletion hits a uniformly random (shard, slice); a trial ends when every shard is dead\n");
  std::printf("# sequences start at full depth; seed %llu\n#\n", static_cast<unsigned long long>(args.seed));
  std::printf("# %8s %10s %21s %9s %10s %8s %10s %10s\n", "trials", "mean", "95% CI", "stddev", "m*L*H", "ratio", "exact", "live-only");
  std::printf("# %8d %10.2f  [%8.2f, %8.2f] %9.2f %10.2f %8.4f %10.2f %10.2f\n", result.trials, result.mean_deletions,
              result.mean_deletions - half, result.mean_deletions + half, result.stddev_deletions, result.formula, ratio,
              result.exact_expectation, result.mean_live_shard_deletions);
  std::printf("#\n# mean: deletions until all shards are dead, every deletion counted; m*L*H: m*L*H(m*min(B,L));\n"
              "# ratio: mean / m*L*H; exact: m*L*H(n), n = distinct first slices of the job's sequences;\n"
              "# live-only: the same trials counting only deletions that hit a live shard\n");
  const nlohmann::json out = {{"job_dir", args.job},
                              {"shards", result.shards},
                              {"slices", result.slices},
                              {"sequences", result.budget},
                              {"selection", selection},
                              {"trials", result.trials},
                              {"seed", args.seed},
                              {"mean_deletions", result.mean_deletions},
                              {"ci95", {result.mean_deletions - half, result.mean_deletions + half}},
                              {"stddev_deletions", result.stddev_deletions},
                              {"formula", result.formula},
                              {"ratio", ratio},
                              {"exact_expectation", result.exact_expectation},
                              {"mean_live_shard_deletions", result.mean_live_shard_deletions}};
  std::cout << out.dump(2) << std::endl;
}

void install(CLI::App& app) {
  CLI::App& bench_group = subcommand_group(app, "bench", "Benchmarks; results and commands in docs/BENCHMARKS.md");
  auto args = std::make_shared<BenchCapacityArgs>();
  CLI::App* cmd = bench_group.add_subcommand(
      "capacity", "Deletion capacity of a trained S3T job: simulated uniform deletions until every shard is dead, vs m*L*H(m*min(B,L))");
  cmd->footer("Example:\n  lethe bench capacity --job runs/fashion-s3t --trials 20000 --seed 1\n"
              "Prints a table (lines starting with '#') and then JSON. The job's own sequence orders (manifest.json)\n"
              "are used, each starting at full depth; nothing in the job directory is written.");
  cmd->add_option("--job", args->job, "Job directory written by `lethe train`")->required();
  cmd->add_option("--trials", args->trials, "Simulated runs of deletions (more: a narrower confidence interval)")->capture_default_str();
  cmd->add_option("--seed", args->seed, "Seed of the simulated deletions")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{91, install};

}  // namespace
}  // namespace lethe::launch
