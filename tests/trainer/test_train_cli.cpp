// End to end through the `lethe` binary: ingest a tiny CSV, pretrain, train (1, 2, 3 MPI ranks),
// resume, eval; and the bad inputs of issue 4 (missing dataset, corrupt checkpoint, backbone mismatch).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "storage/checkpoint_store.h"
#include "storage/job_lock.h"
#include "tests/trainer/cli_job_fixture.h"
#include "trainer/model_config.h"
#include "trainer/pretrain.h"

namespace fs = std::filesystem;
using nlohmann::json;
using lethe::test::json_of;
using lethe::test::lethe_cmd;
using lethe::test::snapshot;

namespace {

using Result = lethe::test::CommandResult;
Result sh(const std::string& command) { return lethe::test::run_command(command); }

std::string config_text(const fs::path& /*dir*/, int shards, int slices, int sequences) {
  return lethe::test::job_config_text(lethe::test::JobShape{shards, slices, sequences, 2});
}

// The shared CLI fixture (tiny CSV dataset, 360 training records, 30% public), with configs as text.
class TrainCli : public lethe::test::CliJobTest {
 protected:
  fs::path write_config(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  Result train(const fs::path& config, const fs::path& job, const std::string& extra = "") {
    return CliJobTest::train(config, job, 1, extra);
  }
};

}  // namespace

TEST_F(TrainCli, PretrainTrainEvalEndToEnd) {
  const auto config = write_config("job.yaml", config_text(dir_, 2, 3, 2));
  const auto p = pretrain(config);
  ASSERT_EQ(p.status, 0) << p.out;
  const auto pj = json_of(p);
  EXPECT_GT(pj.at("records").get<int>(), 60);
  EXPECT_GT(pj.at("head_accuracy").get<double>(), 0.5) << p.out;
  ASSERT_TRUE(fs::exists(dir_ / "backbone.h5"));

  const auto t = train(config, dir_ / "run");
  ASSERT_EQ(t.status, 0) << t.out;
  const auto tj = json_of(t);
  EXPECT_EQ(tj.at("s3t").at("digests").size(), 4u);
  for (const auto& [series, digests] : tj.at("s3t").at("digests").items()) EXPECT_EQ(digests.size(), 3u) << series;
  EXPECT_GT(tj.at("s3t").at("samples").get<long>(), 0);
  for (const char* f : {"manifest.json", "config.yaml", "config.json", "backbone.h5"}) EXPECT_TRUE(fs::exists(dir_ / "run" / f)) << f;
  const auto manifest = json::parse(std::ifstream(dir_ / "run" / "manifest.json"));
  EXPECT_EQ(manifest.at("status"), "trained");
  EXPECT_EQ(manifest.at("routes").at("s3t").at("shards")[0].at("plan").at("sequences")[1].at("surviving_prefix"), 3);
  // Every prefix checkpoint records what it was trained on.
  const lethe::storage::CheckpointStore store(dir_ / "run" / "checkpoints");
  const auto versions = store.versions("shard1-seq1");
  ASSERT_EQ(versions.size(), 3u);
  const auto& meta = versions[1].metadata;
  EXPECT_EQ(meta.at("shard"), 1);
  EXPECT_EQ(meta.at("sequence"), 1);
  EXPECT_EQ(meta.at("prefix"), 2);
  EXPECT_EQ(meta.at("slices").size(), 2u);
  EXPECT_TRUE(meta.contains("data_version") && meta.contains("seeds") && meta.contains("config_digest"));

  const auto e = sh(lethe_cmd() + " eval --job " + (dir_ / "run").string());
  ASSERT_EQ(e.status, 0) << e.out;
  const auto ej = json_of(e);
  EXPECT_EQ(ej.at("records"), 150);
  EXPECT_GT(ej.at("accuracy").get<double>(), 0.8) << e.out;
  EXPECT_EQ(ej.at("models")[0].at("live_shards"), 2);
  EXPECT_EQ(ej.at("models")[0].at("shards")[1].at("depth"), 3);

  // A second run into the same directory without --resume must not touch the first.
  const auto before = snapshot(dir_ / "run");
  const auto again = train(config, dir_ / "run");
  EXPECT_EQ(again.status, 1);
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.out;
  EXPECT_TRUE(snapshot(dir_ / "run") == before) << "a failed command changed the job directory";
}

TEST_F(TrainCli, SameDigestsForOneTwoAndThreeRanksAndAfterResume) {
  const auto config = write_config("job.yaml", config_text(dir_, 2, 3, 3));
  ASSERT_EQ(pretrain(config).status, 0);
  const auto one = train(config, dir_ / "n1");
  ASSERT_EQ(one.status, 0) << one.out;
  const auto reference = json_of(one).at("s3t").at("digests");
  for (int n : {2, 3}) {
    auto job = dir_ / "n";
    job += std::to_string(n);  // not "n" + to_string(n): GCC 12 misreports a memcpy overflow there
    const auto r = CliJobTest::train(config, job, n);
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = json_of(r);
    EXPECT_EQ(j.at("ranks"), n);
    EXPECT_EQ(j.at("s3t").at("digests"), reference) << n << " ranks";
  }

  // Interrupt: series shard0-seq1 lost P_2 and P_3, shard1-seq2 lost P_3; a crashed writer left a .tmp.
  lethe::storage::CheckpointStore store(dir_ / "n1" / "checkpoints");
  store.purge("shard0-seq1", 3);
  store.purge("shard0-seq1", 2);
  store.purge("shard1-seq2", 3);
  std::ofstream(dir_ / "n1" / "checkpoints" / "shard1-seq2" / "v000004.h5.tmp") << "partial";
  const auto resumed = train(config, dir_ / "n1", "--resume");
  ASSERT_EQ(resumed.status, 0) << resumed.out;
  const auto rj = json_of(resumed);
  EXPECT_EQ(rj.at("s3t").at("rank0").at("steps_trained"), 3);
  EXPECT_EQ(rj.at("s3t").at("digests"), reference);
}

// Pretraining spreads each batch's micro-batches over the ranks and adds their gradients in
// micro-batch order: 1, 2 and 3 ranks train the same backbone bit for bit, dropout masks included.
TEST_F(TrainCli, PretrainingGivesTheSameBackboneOnOneTwoAndThreeRanks) {
  const auto with_pretrain = [](const std::string& pretrain) {
    auto text = lethe::test::job_config_text(lethe::test::JobShape{});
    const std::string old = "pretrain: {epochs: 4, batch_size: 16, learning_rate: 0.005}";
    const auto at = text.find(old);
    EXPECT_NE(at, std::string::npos);
    return text.replace(at, old.size(), "pretrain: {" + pretrain + "}");
  };
  const auto config = write_config("job.yaml", with_pretrain("epochs: 3, batch_size: 16, learning_rate: 0.005, dropout: 0.2, micro_batches: 3"));
  const auto pretrain_on = [&](const fs::path& job_config, int ranks, const std::string& name) {
    const auto r = sh((ranks > 1 ? lethe::test::mpiexec(ranks) : std::string()) + lethe_cmd() + " pretrain --config " +
                      job_config.string() + " --out " + (dir_ / name).string());
    EXPECT_EQ(r.status, 0) << r.out;
    const auto report = json_of(r);
    EXPECT_EQ(report.at("ranks"), ranks);
    lethe::trainer::LetheModel model(lethe::trainer::model_config_from_json(report.at("model")), 1);
    lethe::trainer::load_backbone(model, dir_ / name);
    return std::make_pair(report.at("final_loss").get<double>(), model.backbone_and_head_tensors());
  };
  const auto same = [](const lethe::trainer::NamedTensors& a, const lethe::trainer::NamedTensors& b) {
    EXPECT_EQ(a.size(), b.size());
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
      if (a[i].first != b[i].first || !torch::equal(a[i].second, b[i].second)) return false;
    }
    return a.size() == b.size();
  };
  const auto [loss, reference] = pretrain_on(config, 1, "one.h5");
  for (int ranks : {2, 3}) {
    const auto [ranks_loss, tensors] = pretrain_on(config, ranks, "backbone-" + std::to_string(ranks) + ".h5");
    EXPECT_EQ(ranks_loss, loss) << ranks << " ranks";
    EXPECT_TRUE(same(tensors, reference)) << ranks << " ranks trained another backbone than 1 rank";
  }
  // Control: other micro-batches draw other dropout masks, and the comparison tells the models apart.
  const auto other = write_config("other.yaml", with_pretrain("epochs: 3, batch_size: 16, learning_rate: 0.005, dropout: 0.2, micro_batches: 2"));
  EXPECT_FALSE(same(pretrain_on(other, 2, "other.h5").second, reference));
}

TEST_F(TrainCli, CorruptCheckpointDuringResumeIsAClearErrorAndDamagesNothing) {
  const auto config = write_config("job.yaml", config_text(dir_, 1, 3, 1));
  ASSERT_EQ(pretrain(config).status, 0);
  ASSERT_EQ(train(config, dir_ / "run").status, 0);
  lethe::storage::CheckpointStore store(dir_ / "run" / "checkpoints");
  store.purge("shard0-seq0", 3);
  const auto p2 = store.versions("shard0-seq0").back().path;
  // A torn file: its second half is gone (a disk error, a bad copy).
  fs::resize_file(p2, fs::file_size(p2) / 2);
  const auto before = snapshot(dir_ / "run");
  const auto r = train(config, dir_ / "run", "--resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("lethe: error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(p2.filename().string()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shard 0 sequence 0"), std::string::npos) << r.out;
  EXPECT_TRUE(snapshot(dir_ / "run") == before) << "a failed command changed the job directory";
}

TEST_F(TrainCli, BadInputsAreClearErrors) {
  // A config naming a missing dataset.
  auto text = config_text(dir_, 1, 3, 1);
  const auto missing = write_config("missing.yaml", "dataset: nowhere.h5" + text.substr(text.find('\n')));
  auto r = train(missing, dir_ / "run");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("dataset: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nowhere.h5"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "run"));

  // A backbone whose shapes do not match the config.
  const auto config = write_config("job.yaml", text);
  ASSERT_EQ(pretrain(config).status, 0);
  auto wider = text;
  wider.replace(wider.find("[32, 24, 16]"), 12, "[32, 20, 16]");
  const auto mismatched = write_config("wider.yaml", wider);
  r = train(mismatched, dir_ / "run");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("blocks/1/weight' has shape [24, 32]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("expects [20, 32]"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "run"));
  r = sh(lethe_cmd() + " pretrain --config " + mismatched.string() + " --import " + (dir_ / "backbone.h5").string() +
         " --out " + (dir_ / "imported.h5").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("has shape"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "imported.h5"));

  // More slices than records.
  auto many = text;
  many.replace(many.find("shards: 1, slices: 3"), 20, "shards: 40, slices: 3");
  r = train(write_config("many.yaml", many), dir_ / "run");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("s3t.slices: shard"), std::string::npos) << r.out;

  // CUDA where none exists (Debian's libtorch never has it).
  auto cuda = text;
  cuda.replace(cuda.find("seed: 11"), 8, "seed: 11\ndevice: cuda");
  r = train(write_config("cuda.yaml", cuda), dir_ / "run");
  if (r.status == 1) EXPECT_NE(r.out.find("device: cuda"), std::string::npos) << r.out;
}

TEST_F(TrainCli, FullTrainingBaselineIsOneShardOneSliceOneSequence) {
  auto text = config_text(dir_, 1, 1, 1);
  const auto config = write_config("full.yaml", text);
  ASSERT_EQ(pretrain(config).status, 0);
  const auto t = train(config, dir_ / "full");
  ASSERT_EQ(t.status, 0) << t.out;
  EXPECT_EQ(json_of(t).at("s3t").at("digests").at("shard0-seq0").size(), 1u);
  const auto e = sh(lethe_cmd() + " eval --job " + (dir_ / "full").string());
  ASSERT_EQ(e.status, 0) << e.out;
  EXPECT_GT(json_of(e).at("accuracy").get<double>(), 0.8) << e.out;
  EXPECT_EQ(json_of(e).at("models")[0].at("shards")[0].at("depth"), 1);
}

TEST_F(TrainCli, RefusesAJobAnotherWriterHoldsOrThatHasServedDeletions) {
  const auto config = write_config("job.yaml", config_text(dir_, 1, 3, 1));
  ASSERT_EQ(pretrain(config).status, 0);
  ASSERT_EQ(train(config, dir_ / "run").status, 0);
  {
    const lethe::storage::JobLock held(dir_ / "run", "lethe serve");
    const auto before = snapshot(dir_ / "run");
    const auto r = train(config, dir_ / "run", "--resume");
    EXPECT_EQ(r.status, 1);
    EXPECT_NE(r.out.find("in use by lethe serve"), std::string::npos) << r.out;
    EXPECT_TRUE(snapshot(dir_ / "run") == before) << "a refused train changed the job directory";
  }
  // A batch deletion leaves the job's ledger: training it again would undo the deletion.
  const auto victim = sh(lethe_cmd() + " inspect " + (dir_ / "train.h5").string() + " --ids private");
  ASSERT_EQ(victim.status, 0) << victim.out;
  const auto id = victim.out.substr(0, victim.out.find('\n'));
  const auto d = sh(lethe_cmd() + " delete --job " + (dir_ / "run").string() + " --record " + id);
  ASSERT_EQ(d.status, 0) << d.out;
  const auto before = snapshot(dir_ / "run");
  const auto r = train(config, dir_ / "run", "--resume");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("has a deletion ledger"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lethe retrain --job"), std::string::npos) << r.out;
  // `lethe validate` makes the same check.
  const auto v = sh(lethe_cmd() + " validate --config " + config.string() + " --job " + (dir_ / "run").string());
  EXPECT_EQ(v.status, 1);
  EXPECT_NE(v.out.find("has a deletion ledger"), std::string::npos) << v.out;
  EXPECT_TRUE(snapshot(dir_ / "run") == before) << "a refused train changed the job directory";
}
