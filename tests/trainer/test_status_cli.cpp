// `lethe status --job`: a trained tiny job (S3T and noisy GD) before and after a `lethe delete --job`
// batch and a `lethe retrain`, read while another process holds the job's writer lock; and the error
// for a directory that is not a job.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "storage/dataset.h"
#include "storage/job_lock.h"
#include "tests/trainer/cli_job_fixture.h"

namespace fs = std::filesystem;
using lethe::test::CommandResult;
using lethe::test::json_of;
using lethe::test::lethe_cmd;
using lethe::test::run_command;
using nlohmann::json;

namespace {

class StatusCli : public lethe::test::CliJobTest {
 protected:
  void SetUp() override {
    CliJobTest::SetUp();
    if (HasFatalFailure()) return;
    auto text = lethe::test::job_config_text(lethe::test::JobShape{2, 3, 3, 1});
    text += "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 40, target_epsilon: 1.0}\n";
    std::ofstream(dir_ / "job.yaml") << text;
    ASSERT_EQ(pretrain(dir_ / "job.yaml").status, 0);
    const auto trained = train(dir_ / "job.yaml", job());
    ASSERT_EQ(trained.status, 0) << trained.out;
  }
  [[nodiscard]] fs::path job() const { return dir_ / "run"; }
  CommandResult status(const fs::path& job_dir) {
    // Built by appending: GCC 12 misreports a memcpy overflow in operator+ chains here.
    std::string command = "(";
    command += lethe_cmd();
    command += " status --job " + job_dir.string() + " 2>" + (dir_ / "stderr.txt").string() + ")";
    return run_command(command);
  }
  json status_json() {
    const auto r = status(job());
    EXPECT_EQ(r.status, 0) << r.out;
    return json::parse(r.out);  // stdout holds the JSON alone
  }
  [[nodiscard]] std::string first_private_id() const {
    const auto dataset = lethe::storage::Dataset::open(dir_ / "train.h5");
    for (std::uint64_t row = 0; row < dataset.size(); ++row)
      if (!dataset.is_public(row)) return std::string(dataset.id(row));
    throw std::runtime_error("no private record");
  }
  static const json& model(const json& status, const std::string& name) {
    for (const auto& m : status.at("models"))
      if (m.at("name") == name) return m;
    throw std::runtime_error("no model " + name + " in " + status.dump());
  }
};

}  // namespace

TEST_F(StatusCli, BeforeAndAfterABatchDeletionAndARetrain) {
  const auto before = status_json();
  EXPECT_EQ(before.at("status"), "trained");
  EXPECT_EQ(before.at("model_version"), 0);
  const auto& s3t = model(before, "s3t");
  EXPECT_EQ(s3t.at("live_shards"), 2);
  EXPECT_EQ(s3t.at("shards")[0].at("depth"), 3);
  EXPECT_EQ(s3t.at("retrain_pending"), json::array());
  const auto& noisy = model(before, "noisy_gd");
  EXPECT_EQ(noisy.at("steps_taken"), 40);
  const int noisy_version = noisy.at("version").get<int>();
  // No deletion yet: no ledger, and status must not create one.
  EXPECT_EQ(before.at("deletions").at("completed"), 0);
  EXPECT_EQ(before.at("deletions").at("pending"), json::array());
  EXPECT_FALSE(before.at("deletions").contains("last_batch"));
  EXPECT_FALSE(fs::exists(job() / "ledger.sqlite"));
  EXPECT_TRUE(before.at("last_retrain").is_null());

  const auto victim = first_private_id();
  const auto deleted = run_command(lethe_cmd() + " delete --job " + job().string() + " --record " + victim);
  ASSERT_EQ(deleted.status, 0) << deleted.out;
  const auto request_id = json_of(deleted).at("id");

  {
    // A writer (as `lethe serve` would) holds the job: status still reads it, and changes nothing.
    const lethe::storage::JobLock writer(job(), "the status test");
    const auto files = lethe::test::snapshot(job());
    const auto after = status_json();
    // A reader of a WAL database rewrites its -shm file (the WAL index: page numbers, no row
    // content) and SQLite gives it an empty -wal where none is; the database and everything else
    // must stay as they were.
    auto now = lethe::test::snapshot(job());
    auto before = files;
    for (const char* suffix : {"-wal", "-shm"}) {
      const auto name = (job() / "ledger.sqlite").string() + suffix;
      if (!before.count(name) || std::string(suffix) == "-shm") {
        now.erase(name);
        before.erase(name);
      }
    }
    for (const auto& [name, content] : now) {
      EXPECT_TRUE(before.count(name) && before.at(name) == content) << "status changed or created " << name;
    }
    EXPECT_EQ(now.size(), before.size()) << "status removed a file of the job directory";
    EXPECT_EQ(after.at("model_version"), 1);
    const auto& s3t_after = model(after, "s3t");
    int shallower = 0;
    for (const auto& shard : s3t_after.at("shards")) shallower += shard.at("depth").get<int>() < 3 ? 1 : 0;
    EXPECT_EQ(shallower, 1) << s3t_after.dump();  // one record lives in one shard
    const auto& noisy_after = model(after, "noisy_gd");
    EXPECT_GT(noisy_after.at("version").get<int>(), noisy_version);
    EXPECT_GT(noisy_after.at("steps_taken").get<int>(), 40);  // K_U unlearning steps
    const auto& deletions = after.at("deletions");
    EXPECT_EQ(deletions.at("completed"), 1);
    EXPECT_EQ(deletions.at("failed"), 0);
    EXPECT_EQ(deletions.at("queued"), 0);
    EXPECT_EQ(deletions.at("pending"), json::array());
    EXPECT_EQ(deletions.at("last_batch").at("requests"), json::array({request_id}));
    EXPECT_EQ(deletions.at("last_batch").at("records_deleted"), 1);
    EXPECT_GT(deletions.at("last_batch").at("completed_ms").get<std::int64_t>(), 0);
  }

  const auto retrained = run_command(lethe_cmd() + " retrain --job " + job().string());
  ASSERT_EQ(retrained.status, 0) << retrained.out;
  const auto after_retrain = status_json();
  EXPECT_EQ(after_retrain.at("model_version"), 2);
  for (const auto& shard : model(after_retrain, "s3t").at("shards")) EXPECT_EQ(shard.at("depth"), 3);
  const auto& last = after_retrain.at("last_retrain");
  ASSERT_TRUE(last.is_object()) << after_retrain.dump();
  EXPECT_EQ(last.at("model_version"), 2);
  EXPECT_EQ(last.at("id"), json_of(retrained).at("id"));
  EXPECT_EQ(last.at("routes").at("s3t").at("retrain").at("sequences_restored"),
            json_of(retrained).at("s3t").at("sequences_restored"));
  EXPECT_EQ(after_retrain.at("retrain").at("last").at("model_version"), 2);
  EXPECT_EQ(after_retrain.at("retrain").at("in_progress"), json::array());
  EXPECT_GT(last.at("completed_ms").get<std::int64_t>(), after_retrain.at("deletions").at("last_batch").at("completed_ms").get<std::int64_t>());
}

TEST_F(StatusCli, ADirectoryThatIsNotAJobIsRefusedClearly) {
  const auto r = status(dir_);  // the fixture's folder: datasets, no manifest
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  std::ifstream in(dir_ / "stderr.txt");
  const std::string err(std::istreambuf_iterator<char>(in), {});
  EXPECT_NE(err.find("lethe: error: --job " + dir_.string() + " is not a Lethe job: it holds no manifest.json"), std::string::npos)
      << err;
  const auto missing = status(dir_ / "nowhere");
  EXPECT_EQ(missing.status, 1);
}
