// YAML job config: defaults, relative paths, and errors that name the key for each kind of mistake.
#include <gtest/gtest.h>

#include "launch/job_config.h"

using lethe::launch::ConfigError;
using lethe::launch::parse_job_config;

namespace {

const char* kValid = R"(
dataset: data/train.h5
backbone: backbone.h5
job_dir: runs/a
seed: 7
s3t: {shards: 2, slices: 3, sequences: 3, selection: cyclic}
model: {architecture: mlp, widths: [64, 32, 32, 16], lora_rank: 2, lora_alpha: 4}
training: {epochs: 1, batch_size: 32, learning_rate: 0.01}
)";

std::string error_of(const std::string& yaml) {
  try {
    (void)parse_job_config(yaml, "/cfg/job.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string with(const std::string& replace, const std::string& by) {
  std::string text = kValid;
  const auto at = text.find(replace);
  EXPECT_NE(at, std::string::npos) << replace;
  return text.replace(at, replace.size(), by);
}

}  // namespace

TEST(JobConfig, ParsesValuesDefaultsAndResolvesPathsAgainstTheFile) {
  const auto c = parse_job_config(kValid, "/cfg/job.yaml");
  EXPECT_EQ(c.dataset, "/cfg/data/train.h5");
  EXPECT_EQ(c.job_dir, "/cfg/runs/a");
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.s3t.shards, 2);
  EXPECT_EQ(c.model.sites, 3) << "one adapter site per slice";
  EXPECT_EQ(c.model.widths.size(), 4u);
  EXPECT_EQ(c.training.batch_size, 32);
  EXPECT_EQ(c.pretrain.epochs, 3) << "default";
  EXPECT_EQ(c.device, "cpu");
  const auto spec = lethe::launch::to_job_spec(c, "/elsewhere");
  EXPECT_EQ(spec.job_dir, "/elsewhere");
  EXPECT_EQ(spec.config_digest, lethe::launch::config_digest(c));
  EXPECT_EQ(spec.config_digest.size(), 16u);
}

TEST(JobConfig, DigestIgnoresPathsButNotTrainingSettings) {
  const auto a = parse_job_config(kValid, "/cfg/job.yaml");
  const auto b = parse_job_config(with("data/train.h5", "other.h5"), "/x/job.yaml");
  const auto c = parse_job_config(with("seed: 7", "seed: 8"), "/cfg/job.yaml");
  EXPECT_EQ(lethe::launch::config_digest(a), lethe::launch::config_digest(b));
  EXPECT_NE(lethe::launch::config_digest(a), lethe::launch::config_digest(c));
}

TEST(JobConfig, ErrorsNameTheKey) {
  EXPECT_NE(error_of(with("seed: 7", "seed: 7\nepochs: 3")).find("epochs: unknown key"), std::string::npos);
  EXPECT_NE(error_of(with("epochs: 1", "epoch: 1")).find("training.epoch: unknown key"), std::string::npos);
  EXPECT_NE(error_of(with("batch_size: 32", "batch_size: many")).find("training.batch_size: expected an integer"),
            std::string::npos);
  EXPECT_NE(error_of(with("shards: 2", "shards: 0")).find("s3t.shards"), std::string::npos);
  EXPECT_NE(error_of(with("slices: 3", "slices: 5")).find("model.widths"), std::string::npos)
      << "5 slices need 5 adapter sites but only 4 blocks exist";
  EXPECT_NE(error_of(with("selection: cyclic", "selection: random")).find("s3t.selection"), std::string::npos);
  EXPECT_NE(error_of(with("sequences: 3", "sequences: 7")).find("s3t.sequences"), std::string::npos) << "3! = 6";
  EXPECT_NE(error_of(with("architecture: mlp", "architecture: rnn")).find("model.architecture"), std::string::npos);
  EXPECT_NE(error_of(with("dataset: data/train.h5\n", "")).find("dataset: missing"), std::string::npos);
  EXPECT_NE(error_of(with("seed: 7", "device: tpu")).find("device"), std::string::npos);
  EXPECT_NE(error_of(with("widths: [64, 32, 32, 16]", "widths: [64, x]")).find("model.widths[1]"), std::string::npos);
  EXPECT_NE(error_of(with("learning_rate: 0.01", "learning_rate: -1")).find("training.learning_rate"), std::string::npos);
  EXPECT_NE(error_of("just a string").find("mapping"), std::string::npos);
  EXPECT_NE(error_of("a: [1, 2").find("not valid YAML"), std::string::npos);
  EXPECT_NE(error_of(kValid).find(""), std::string::npos);
  EXPECT_EQ(error_of(kValid), "");
}

TEST(JobConfig, BmsProbabilitiesAreValidatedPerSlice) {
  const auto bms = with("selection: cyclic", "selection: bms, deletion_probabilities: [0.5, 0.3, 0.1]");
  const auto c = parse_job_config(bms, "/cfg/job.yaml");
  EXPECT_EQ(c.s3t.deletion_probabilities.size(), 3u);
  EXPECT_NE(error_of(with("selection: cyclic", "selection: bms, deletion_probabilities: [0.5, 0.3]"))
                .find("s3t.deletion_probabilities"),
            std::string::npos);
}

TEST(JobConfig, MissingFileIsAClearError) {
  try {
    (void)lethe::launch::load_job_config("/nonexistent/job.yaml");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/job.yaml"), std::string::npos);
  }
}

TEST(JobConfig, EveryExampleConfigParses) {
  const auto examples = std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "launch" / "examples";
  int parsed = 0;
  for (const auto& entry : std::filesystem::directory_iterator(examples)) {
    if (entry.path().extension() != ".yaml") continue;
    const auto c = lethe::launch::load_job_config(entry.path());
    EXPECT_EQ(c.model.sites, c.s3t.slices) << entry.path();
    ++parsed;
  }
  EXPECT_GE(parsed, 3);
}
