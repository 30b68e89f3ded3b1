// `lethe validate --config`: a valid config's JSON summary, and the errors train would give (unknown
// key, wrong type, missing dataset, too few records) on stderr with exit 1, nothing written.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/trainer/cli_job_fixture.h"

namespace fs = std::filesystem;
using lethe::test::CommandResult;
using lethe::test::json_of;
using lethe::test::lethe_cmd;
using lethe::test::run_command;

namespace {

class ValidateCli : public lethe::test::CliJobTest {
 protected:
  fs::path write_text(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return dir_ / name;
  }
  CommandResult validate(const fs::path& config) {
    // stdout and stderr apart (run_command adds 2>&1 outside the subshell): the JSON alone on stdout, the error on stderr.
    return run_command("(" + lethe_cmd() + " validate --config " + config.string() + " 2>" + (dir_ / "stderr.txt").string() + ")");
  }
  std::string stderr_text() const {
    std::ifstream in(dir_ / "stderr.txt");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  std::string base_config() const { return lethe::test::job_config_text(lethe::test::JobShape{}); }
};

}  // namespace

TEST_F(ValidateCli, ValidConfigPrintsItsSummaryAndWritesNothing) {
  const auto config = write_config("job.yaml", lethe::test::JobShape{});
  ASSERT_EQ(pretrain(config).status, 0);
  const auto before = lethe::test::snapshot(dir_);
  const auto r = validate(config);
  ASSERT_EQ(r.status, 0) << r.out << stderr_text();
  const auto j = nlohmann::json::parse(r.out);  // stdout is exactly one JSON document
  EXPECT_EQ(j.at("valid"), true);
  EXPECT_EQ(j.at("config"), config.string());
  EXPECT_EQ(j.at("models"), nlohmann::json::array({"s3t"}));
  EXPECT_EQ(j.at("s3t").at("shards"), 2);
  EXPECT_EQ(j.at("s3t").at("slices"), 3);
  EXPECT_EQ(j.at("s3t").at("sequences"), 3);
  EXPECT_GT(j.at("s3t").at("fewest_records_per_slice").get<int>(), 0);
  EXPECT_EQ(j.at("job_dir"), (dir_ / "run").string());
  EXPECT_EQ(j.at("existing_run"), false);
  EXPECT_EQ(j.at("dataset").at("records"), 360);
  EXPECT_EQ(j.at("model").at("input_shape"), nlohmann::json::array({1, 6, 6}));
  std::filesystem::remove(dir_ / "stderr.txt");
  EXPECT_EQ(lethe::test::snapshot(dir_), before);  // no job directory, nothing changed
  EXPECT_FALSE(fs::exists(dir_ / "run"));
}

TEST_F(ValidateCli, UnknownKeyIsNamedWithTheKnownOnes) {
  const auto config = write_text("job.yaml", base_config() + "epochz: 3\n");
  const auto r = validate(config);
  EXPECT_EQ(r.status, 1);
  EXPECT_TRUE(r.out.empty()) << r.out;
  const auto err = stderr_text();
  EXPECT_NE(err.find("lethe: error: " + config.string() + ": epochz: unknown key; known keys here:"), std::string::npos) << err;
}

TEST_F(ValidateCli, WrongTypeNamesTheKeyAndTheExpectedType) {
  auto text = base_config();
  text.replace(text.find("shards: 2"), 9, "shards: two");
  const auto config = write_text("job.yaml", text);
  const auto r = validate(config);
  EXPECT_EQ(r.status, 1);
  const auto err = stderr_text();
  EXPECT_NE(err.find(config.string() + ": s3t.shards: expected an integer, got 'two'"), std::string::npos) << err;
}

TEST_F(ValidateCli, MissingDatasetIsNamedWithWhatToDo) {
  auto text = base_config();
  text.replace(text.find("dataset: train.h5"), 17, "dataset: absent.h5");
  const auto config = write_text("job.yaml", text);
  const auto r = validate(config);
  EXPECT_EQ(r.status, 1);
  const auto err = stderr_text();
  EXPECT_NE(err.find("lethe: error: " + config.string() + ": dataset: " + (dir_ / "absent.h5").string() +
                     " does not exist; ingest it first"),
            std::string::npos)
      << err;
}

TEST_F(ValidateCli, TooManyShardsForTheDatasetAndMissingBackboneAreCaught) {
  // 360 records cannot fill 150 shards x 3 slices: some (shard, slice) is empty.
  lethe::test::JobShape big;
  big.shards = 150;
  const auto crowded = write_config("crowded.yaml", big);
  const auto r = validate(crowded);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(stderr_text().find(crowded.string() + ": s3t.slices: shard "), std::string::npos) << stderr_text();
  EXPECT_NE(stderr_text().find("lower s3t.shards or s3t.slices"), std::string::npos) << stderr_text();

  const auto config = write_config("job.yaml", lethe::test::JobShape{});  // not pretrained: no backbone.h5
  const auto b = validate(config);
  EXPECT_EQ(b.status, 1);
  EXPECT_NE(stderr_text().find("backbone file " + (dir_ / "backbone.h5").string() + " does not exist"), std::string::npos)
      << stderr_text();
}
