// `lethe retrain` end to end: records are erased and the plans truncated as the coordinator does, then
// the scheduled retrain (2 MPI ranks) restores full depth on the remaining data, and the restored
// models are exactly those a fresh `lethe train` on the erased dataset produces.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "storage/checkpoint_store.h"
#include "storage/dataset.h"
#include "storage/erasure.h"
#include "storage/job_lock.h"
#include "storage/record_assignment.h"
#include "tests/trainer/cli_job_fixture.h"
#include "trainer/job_manifest.h"
#include "trainer/job_retrain.h"
#include "trainer/s3t_plan.h"
#include "trainer/s3t_state.h"

using namespace lethe::test;
using namespace lethe::trainer;
using lethe::storage::CheckpointStore;
using nlohmann::json;

namespace {

// Live non-public training records of `dataset` in (shard, slice), in file order.
std::vector<std::string> records_in(const lethe::storage::Dataset& dataset, int shards, int slices, int shard,
                                    const std::set<int>& slice_set) {
  lethe::storage::RecordFilter filter;
  filter.public_records = lethe::storage::PublicRecords::exclude;
  std::vector<std::string> ids;
  for (const auto row : dataset.select(filter)) {
    const auto id = std::string(dataset.id(row));
    const auto a = dataset.assigner().assign(id, shards, slices);
    if (a.shard == shard && slice_set.count(a.slice)) ids.push_back(id);
  }
  return ids;
}

// The records digest a checkpoint's metadata records (trainer/s3t_job.cpp): SipHash of its ids.
std::uint64_t digest_of(const std::vector<std::string>& ids) {
  std::string text;
  for (const auto& id : ids) text += id + '\n';
  return lethe::storage::siphash24(1, 2, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

// What the coordinator does for deleted records of a trained job: truncate every sequence of the
// record's shard, purge the prefix checkpoints the record influenced (unless `purge` is false, as if
// it crashed first), list dead shards for retraining, record the dataset's content after the
// erasure, commit the manifest.
void apply_deletions(const fs::path& job, const lethe::storage::Dataset& dataset, const std::vector<std::string>& ids,
                     int shards, int slices, const std::set<int>& purge_shards) {
  auto manifest = read_job_manifest(job);
  auto section = decode_s3t_section(*manifest.section(kS3TRouteName), "test");
  CheckpointStore store(manifest.checkpoints_path());
  std::vector<int> pending;
  for (int k = 0; k < shards; ++k) {
    auto& plan = section.shards[static_cast<std::size_t>(k)].plan;
    for (const auto& id : ids) {
      const auto a = dataset.assigner().assign(id, shards, slices);
      if (a.shard != k) continue;
      const auto effect = apply_deletion(plan, a.slice);
      if (!purge_shards.count(k)) continue;
      for (const auto& truncation : effect.sequences) {
        const auto name = series_name(k, truncation.sequence);
        for (const auto& info : store.versions(name)) {
          const auto& steps = truncation.invalidated_steps;
          if (std::find(steps.begin(), steps.end(), info.metadata.at("prefix").get<int>()) != steps.end()) store.purge(name, info.version);
        }
      }
    }
    if (is_dead(plan)) pending.push_back(k);
  }
  section.retrain_pending = pending;
  manifest.routes[kS3TRouteName] = encode_s3t_section(section);
  manifest.dataset.digest = dataset.content_digest();
  commit_job_manifest(manifest);
}

// The manifest as stored, and its S3T section.
json load_manifest(const fs::path& job) { return encode_job_manifest(read_job_manifest(job)); }
json s3t_of(const json& manifest) { return manifest.at("routes").at("s3t"); }

}  // namespace

class Retrain : public CliJobTest {};

TEST_F(Retrain, RestoresFullDepthExactlyAsAFreshRunOnTheRemainingData) {
  // Bit-for-bit equality with a fresh run holds for the algorithm, but an optimized BLAS
  // (OpenBLAS) rounds a row differently in batches of different sizes, and the fresh run's
  // activation-cache batches lack the erased records. The reference BLAS rounds every row alike:
  // this test's commands run on it (libtorch links libblas.so.3, which this directory provides).
  const fs::path reference_blas = "/usr/lib/x86_64-linux-gnu/blas";
  if (!fs::exists(reference_blas / "libblas.so.3")) GTEST_SKIP() << "no reference BLAS at " << reference_blas << " (Debian's libblas3)";
  ::setenv("LD_LIBRARY_PATH", reference_blas.c_str(), 1);
  const JobShape shape{2, 3, 3, 2};  // cyclic orders [0,1,2], [1,2,0], [2,0,1]
  const auto config = write_config("job.yaml", shape);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto job = dir_ / "run";
  const auto t = train(config, job);
  ASSERT_EQ(t.status, 0) << t.out;

  // Shard 0 loses two records of slice 1: depths become 1, 0, 2 (still live). Shard 1 loses one record
  // of every slice: dead. The coordinator purges shard 0's invalidated checkpoints but "crashes" before
  // purging shard 1's, which retrain must then purge itself.
  std::vector<std::string> erased;
  {
    const auto dataset = lethe::storage::Dataset::open(dir_ / "train.h5");
    const auto slice1 = records_in(dataset, shape.shards, shape.slices, 0, {1});
    ASSERT_GE(slice1.size(), 3u);
    erased = {slice1[0], slice1[2]};
    for (int s = 0; s < shape.slices; ++s) erased.push_back(records_in(dataset, shape.shards, shape.slices, 1, {s}).at(1));
  }
  const auto erasure = lethe::storage::erase_records(dir_ / "train.h5", erased);
  ASSERT_EQ(erasure.erased.size(), erased.size());
  const auto dataset = lethe::storage::Dataset::open(dir_ / "train.h5");
  apply_deletions(job, dataset, erased, shape.shards, shape.slices, {0});
  const auto truncated = load_manifest(job);
  ASSERT_EQ(s3t_of(truncated).at("retrain_pending"), json::array({1}));
  std::vector<std::vector<int>> depth_before(2);
  const auto truncated_s3t = s3t_of(truncated);
  for (int k = 0; k < 2; ++k) {
    for (const auto& s : truncated_s3t["shards"][k]["plan"]["sequences"]) depth_before[k].push_back(s["surviving_prefix"].get<int>());
  }
  ASSERT_EQ(depth_before[0], (std::vector<int>{1, 0, 2}));
  ASSERT_EQ(depth_before[1], (std::vector<int>{0, 0, 0}));
  const auto served = run_command(lethe_cmd() + " eval --job " + job.string());
  ASSERT_EQ(served.status, 0) << served.out;
  EXPECT_EQ(json_of(served).at("models")[0].at("live_shards"), 1);

  const auto r = run_command(mpiexec(2) + lethe_cmd() + " retrain --job " + job.string());
  ASSERT_EQ(r.status, 0) << r.out;
  const auto report = json_of(r);
  EXPECT_EQ(report.at("ranks"), 2);
  EXPECT_EQ(report.at("retrained"), true);
  EXPECT_EQ(report.at("adopted_by"), "lethe retrain");  // nobody else held the job
  const auto id = report.at("id").get<std::string>();
  const auto& s3t = report.at("s3t");
  EXPECT_EQ(s3t.at("sequences_restored"), 6);
  EXPECT_EQ(s3t.at("shards_revived"), json::array({1}));
  EXPECT_EQ(s3t.at("steps_planned"), (2 + 3 + 1) + 9);
  EXPECT_EQ(s3t.at("steps_trained"), (2 + 3 + 1) + 9);
  EXPECT_EQ(report.at("model_version"), 1);
  EXPECT_EQ(report.at("adoption").at("deleted_since_snapshot"), 0);
  EXPECT_GT(report.at("seconds").get<double>(), 0.0);

  // Full depth, nothing pending, a new model version; the retrain's record says adopted.
  const auto manifest = load_manifest(job);
  EXPECT_EQ(manifest.at("status"), "trained");
  EXPECT_EQ(s3t_of(manifest).at("retrain_pending"), json::array());
  EXPECT_EQ(manifest.at("model_version"), 1);
  const auto manifest_s3t = s3t_of(manifest);
  for (const auto& shard : manifest_s3t.at("shards")) {
    for (const auto& s : shard.at("plan").at("sequences")) EXPECT_EQ(s.at("surviving_prefix"), shape.slices);
  }
  const auto record = json::parse(read_text(job / "retrain" / (id + ".json")));
  EXPECT_EQ(record.at("status"), "adopted");
  EXPECT_EQ(record.at("model_version"), 1);

  // Each sequence is served from the series its retrain wrote (every sequence but shard 0's third
  // was truncated), and the series it replaced are gone, with shard 1's checkpoints the "crashed"
  // coordinator had left.
  const CheckpointStore store(job / "checkpoints");
  const auto served_series = [&](int k, int b) {
    return manifest_s3t.at("shards")[k].at("series")[b].at("name").get<std::string>();
  };
  for (int k = 0; k < shape.shards; ++k) {
    for (int b = 0; b < shape.sequences; ++b) {
      const bool restored = depth_before[static_cast<std::size_t>(k)][static_cast<std::size_t>(b)] < shape.slices;
      EXPECT_EQ(served_series(k, b), restored ? series_name(k, b) + "-r" + id : series_name(k, b));
      if (restored) EXPECT_TRUE(store.versions(series_name(k, b)).empty()) << series_name(k, b) << " was not purged";
    }
  }

  // No committed checkpoint counts an erased record: each one's record count and records digest are
  // those of the live records of its slices now.
  for (int k = 0; k < shape.shards; ++k) {
    for (int b = 0; b < shape.sequences; ++b) {
      const auto versions = store.versions(served_series(k, b));
      ASSERT_EQ(versions.size(), static_cast<std::size_t>(shape.slices)) << served_series(k, b);
      for (const auto& info : versions) {
        const auto slices = info.metadata.at("slices").get<std::vector<int>>();
        const auto ids = records_in(dataset, shape.shards, shape.slices, k, {slices.begin(), slices.end()});
        EXPECT_EQ(info.metadata.at("records").get<std::size_t>(), ids.size()) << info.path;
        EXPECT_EQ(info.metadata.at("records_digest").get<std::uint64_t>(), digest_of(ids)) << info.path;
      }
    }
  }

  // The strong check: a fresh run of the same config on the erased dataset. Every prefix has the same
  // tensors, bit for bit; the surviving ones' metadata differs only in the data version they were
  // trained on (before erasure), which it truthfully records.
  const auto fresh = train(config, dir_ / "fresh");
  ASSERT_EQ(fresh.status, 0) << fresh.out;
  const CheckpointStore fresh_store(dir_ / "fresh" / "checkpoints");
  for (int k = 0; k < shape.shards; ++k) {
    for (int b = 0; b < shape.sequences; ++b) {
      const auto ours_name = served_series(k, b);
      const auto name = series_name(k, b);
      for (int prefix = 1; prefix <= shape.slices; ++prefix) {
        const auto i = static_cast<std::size_t>(prefix - 1);
        const auto ours = store.load(ours_name, store.versions(ours_name)[i].version);
        const auto theirs = fresh_store.load(name, fresh_store.versions(name)[i].version);
        ASSERT_EQ(ours.info.metadata.at("prefix"), prefix);
        ASSERT_EQ(ours.tensors.size(), theirs.tensors.size());
        for (std::size_t t = 0; t < ours.tensors.size(); ++t) {
          EXPECT_EQ(ours.tensors[t].name, theirs.tensors[t].name);
          EXPECT_TRUE(ours.tensors[t].bytes == theirs.tensors[t].bytes) << name << " P_" << prefix << " " << ours.tensors[t].name;
        }
        auto a = ours.info.metadata, c = theirs.info.metadata;
        if (prefix <= depth_before[static_cast<std::size_t>(k)][static_cast<std::size_t>(b)]) {
          EXPECT_NE(a.at("data_version"), c.at("data_version"));
        }
        a.erase("data_version");
        c.erase("data_version");
        EXPECT_EQ(a, c) << name << " P_" << prefix;
      }
    }
  }

  // Serving works at full depth, with the fresh run's accuracy.
  const auto e = run_command(lethe_cmd() + " eval --job " + job.string());
  ASSERT_EQ(e.status, 0) << e.out;
  const auto ej = json_of(e);
  EXPECT_EQ(ej.at("models")[0].at("live_shards"), shape.shards);
  for (const auto& s : ej.at("models")[0].at("shards")) EXPECT_EQ(s.at("depth"), shape.slices);
  const auto fe = run_command(lethe_cmd() + " eval --job " + (dir_ / "fresh").string());
  ASSERT_EQ(fe.status, 0) << fe.out;
  EXPECT_EQ(ej.at("accuracy"), json_of(fe).at("accuracy"));

  // Nothing left to do: a second retrain changes nothing but its own record (and its lock file's
  // holder line), and keeps the model version.
  const auto models_only = [&] {
    auto files = snapshot(job);
    std::erase_if(files, [&](const auto& f) { return f.first.find("/retrain/") != std::string::npos; });
    return files;
  };
  const auto before = models_only();
  const auto again = run_command(lethe_cmd() + " retrain --job " + job.string());
  ASSERT_EQ(again.status, 0) << again.out;
  EXPECT_EQ(json_of(again).at("retrained"), false);
  EXPECT_EQ(json_of(again).at("adopted_by"), "nobody: nothing to retrain");
  EXPECT_EQ(json_of(again).at("model_version"), 1);
  EXPECT_EQ(json::parse(read_text(job / "retrain" / (json_of(again).at("id").get<std::string>() + ".json"))).at("status"),
            "nothing_to_do");
  EXPECT_NE(read_text(job / ".retrain.lock").find("lethe retrain"), std::string::npos);
  EXPECT_TRUE(models_only() == before) << "a retrain with nothing to do changed the job";
}

TEST_F(Retrain, TrainsBesideAWriterRefusesASecondRetrainAndAnEditedConfig) {
  const JobShape shape{1, 2, 1, 1};
  const auto config = write_config("job.yaml", shape);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto job = dir_ / "run";
  ASSERT_EQ(train(config, job).status, 0);
  const auto slice1 = records_in(lethe::storage::Dataset::open(dir_ / "train.h5"), 1, 2, 0, {1});
  const auto victim = slice1.at(0), second_victim = slice1.at(1), third_victim = slice1.at(2);
  ASSERT_EQ(lethe::storage::erase_records(dir_ / "train.h5", std::vector<std::string>{victim}).erased.size(), 1u);
  apply_deletions(job, lethe::storage::Dataset::open(dir_ / "train.h5"), {victim}, 1, 2, {0});

  {
    // Another retrain runs: refused, naming it, and nothing changes.
    const lethe::storage::JobLock other(job, "lethe retrain (the other one)", lethe::storage::JobLock::Kind::kRetrain);
    const auto before = snapshot(job);
    const auto r = run_command(lethe_cmd() + " retrain --job " + job.string());
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("lethe: error:"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("already running: lethe retrain (the other one) (pid "), std::string::npos) << r.out;
    EXPECT_TRUE(snapshot(job) == before) << "a refused retrain changed the job directory";
  }
  std::string trained_id;
  {
    // A writer (`lethe serve`) holds the job: the retrain trains beside it and leaves the adoption to
    // it (--no-wait: without it, it would wait for that); the served models do not change.
    const lethe::storage::JobLock held(job, "lethe serve");
    const auto manifest_before = read_text(job_manifest_path(job));
    const auto r = run_command(lethe_cmd() + " retrain --no-wait --job " + job.string());
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(json_of(r).at("adopted_by"), "the job's writer");
    EXPECT_EQ(json_of(r).at("model_version"), 0);
    trained_id = json_of(r).at("id").get<std::string>();
    EXPECT_EQ(json::parse(read_text(job / "retrain" / (trained_id + ".json"))).at("status"), "trained");
    EXPECT_EQ(read_text(job_manifest_path(job)), manifest_before) << "the retrain changed what the writer serves";
    const auto status = json_of(run_command(lethe_cmd() + " status --job " + job.string()));
    EXPECT_EQ(status.at("retrain").at("in_progress").at(0).at("id"), trained_id);
    EXPECT_EQ(status.at("retrain").at("in_progress").at(0).at("phase"), "adopting");
  }
  // Once the writer is gone, the next writer adopts it: here `lethe delete --job` (a deletion of a
  // record that does not exist, which changes nothing else).
  const auto d = run_command(lethe_cmd() + " delete --job " + job.string() + " --record no-such-record");
  ASSERT_EQ(d.status, 0) << d.out;
  EXPECT_EQ(load_manifest(job).at("model_version"), 1);
  EXPECT_EQ(load_manifest(job).at("last_retrain").at("details").at("id"), trained_id);
  EXPECT_EQ(json::parse(read_text(job / "retrain" / (trained_id + ".json"))).at("status"), "adopted");

  // A writer that dies right after the swap's commit (before purging what the old models left and
  // recording the retrain adopted): the next writer finishes the adoption, and nothing is adopted twice.
  ASSERT_EQ(lethe::storage::erase_records(dir_ / "train.h5", std::vector<std::string>{second_victim}).erased.size(), 1u);
  apply_deletions(job, lethe::storage::Dataset::open(dir_ / "train.h5"), {second_victim}, 1, 2, {0});
  std::string swapped_id;
  std::vector<std::string> replaced;
  {
    const lethe::storage::JobLock held(job, "lethe serve");
    const auto r = run_command(lethe_cmd() + " retrain --no-wait --job " + job.string());
    ASSERT_EQ(r.status, 0) << r.out;
    swapped_id = json_of(r).at("id").get<std::string>();
    const auto current = read_job_manifest(job);
    for (const auto& series : s3t_of(encode_job_manifest(current)).at("shards")[0].at("series")) {
      replaced.push_back(series.at("name").get<std::string>());
    }
    const auto run = find_retrain_run(job, swapped_id);
    ASSERT_TRUE(run.has_value());
    auto adoption = plan_adoption(current, *run, lethe::storage::Dataset::open(dir_ / "train.h5"));
    commit_job_manifest(adoption.next);  // ... and the writer is gone
  }
  EXPECT_EQ(json::parse(read_text(job / "retrain" / (swapped_id + ".json"))).at("status"), "trained");
  const auto finisher = run_command(lethe_cmd() + " delete --job " + job.string() + " --record no-such-record");
  ASSERT_EQ(finisher.status, 0) << finisher.out;
  const auto finished = json::parse(read_text(job / "retrain" / (swapped_id + ".json")));
  EXPECT_EQ(finished.at("status"), "adopted");
  EXPECT_EQ(finished.at("model_version"), 2);
  EXPECT_EQ(load_manifest(job).at("model_version"), 2);
  const CheckpointStore store(job / "checkpoints");
  for (const auto& name : replaced) {
    const bool still_served = load_manifest(job).dump().find("\"" + name + "\"") != std::string::npos;
    if (!still_served) EXPECT_TRUE(store.versions(name).empty()) << name << " outlived the adoption that replaced it";
  }

  // A retrain waiting for the writer's adoption adopts its result itself once the writer is gone.
  ASSERT_EQ(lethe::storage::erase_records(dir_ / "train.h5", std::vector<std::string>{third_victim}).erased.size(), 1u);
  apply_deletions(job, lethe::storage::Dataset::open(dir_ / "train.h5"), {third_victim}, 1, 2, {0});
  {
    auto writer = std::make_unique<lethe::storage::JobLock>(job, "lethe serve");
    CommandResult waited;
    std::thread retrain([&] { waited = run_command(lethe_cmd() + " retrain --job " + job.string()); });
    // Until its record says trained: then it waits for the writer.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    bool trained = false;
    while (!trained && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      for (const auto& run : list_retrain_runs(job)) trained = trained || run.status == RetrainStatus::kTrained;
    }
    writer.reset();  // the writer stops without adopting it
    retrain.join();
    ASSERT_TRUE(trained);
    ASSERT_EQ(waited.status, 0) << waited.out;
    EXPECT_EQ(json_of(waited).at("adopted_by"), "lethe retrain (the job's writer stopped before adopting it)");
    EXPECT_EQ(json_of(waited).at("model_version"), 3);
    EXPECT_EQ(load_manifest(job).at("model_version"), 3);
  }

  // A config.json that no longer matches the run (edited) is refused before anything is purged.
  apply_deletions(job, lethe::storage::Dataset::open(dir_ / "train.h5"), {victim}, 1, 2, {});
  auto edited = json::parse(std::ifstream(job / "config.json"));
  edited["training"]["learning_rate"] = 0.5;
  std::ofstream(job / "config.json") << edited.dump(2);
  const auto before = snapshot(job);
  const auto refused = run_command(lethe_cmd() + " retrain --job " + job.string());
  EXPECT_EQ(refused.status, 1);
  EXPECT_NE(refused.out.find("config_digest"), std::string::npos) << refused.out;
  EXPECT_TRUE(snapshot(job) == before) << "a refused retrain changed the job directory";

  const auto missing = run_command(lethe_cmd() + " retrain --job " + (dir_ / "nowhere").string());
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.out.find("config.json"), std::string::npos) << missing.out;
}
