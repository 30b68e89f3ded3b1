// YAML job config: defaults, relative paths, and errors that name the key for each kind of mistake.
#include <gtest/gtest.h>

#include <cmath>

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
  EXPECT_EQ(c.training.optimizer.batch_size, 32);
  EXPECT_EQ(c.pretrain.optimizer.epochs, 3) << "default";
  EXPECT_EQ(c.device, "cpu");
  const auto spec = lethe::launch::with_job_dir(c, "/elsewhere");
  EXPECT_EQ(spec.job_dir, "/elsewhere");
  EXPECT_EQ(lethe::trainer::config_digest(spec), lethe::trainer::config_digest(c));
  EXPECT_EQ(lethe::trainer::config_digest(spec).size(), 16u);
}

TEST(JobConfig, DigestIgnoresPathsButNotTrainingSettings) {
  const auto a = parse_job_config(kValid, "/cfg/job.yaml");
  const auto b = parse_job_config(with("data/train.h5", "other.h5"), "/x/job.yaml");
  const auto c = parse_job_config(with("seed: 7", "seed: 8"), "/cfg/job.yaml");
  EXPECT_EQ(lethe::trainer::config_digest(a), lethe::trainer::config_digest(b));
  EXPECT_NE(lethe::trainer::config_digest(a), lethe::trainer::config_digest(c));
}

TEST(JobConfig, ErrorsNameTheKey) {
  EXPECT_NE(error_of(with("seed: 7", "seed: 7\nepochs: 3")).find("epochs: unknown key"), std::string::npos);
  EXPECT_NE(error_of(with("epochs: 1", "epoch: 1")).find("training.epoch: unknown key"), std::string::npos);
  // A YAML mapping as a key (`? ...`, what fuzz_job_config found) is a clear error, not yaml-cpp's own exception.
  EXPECT_NE(error_of(with("shards: 2", "[x]: 1, shards: 2")).find("s3t: has a key that is a YAML list or mapping"),
            std::string::npos);
  EXPECT_NE(error_of(with("seed: 7", "seed: 7\n? [a, b]\n: 1")).find("(document): has a key that is a YAML list or mapping"),
            std::string::npos);
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

TEST(JobConfig, NoisyGdSectionDefaultsAndValues) {
  const auto without = parse_job_config(kValid, "/cfg/job.yaml");
  EXPECT_FALSE(without.noisy_gd.enabled) << "no section: no noisy-GD model";
  EXPECT_TRUE(without.s3t.enabled) << "S3T stays on by default";
  EXPECT_TRUE(lethe::trainer::to_json(without).at("noisy_gd").is_null());

  const auto defaults = parse_job_config(std::string(kValid) + "noisy_gd: {}\n", "/cfg/job.yaml");
  EXPECT_TRUE(defaults.noisy_gd.enabled) << "a present section is enabled";
  EXPECT_TRUE(defaults.s3t.enabled);
  EXPECT_GT(defaults.noisy_gd.params.lambda, 0);
  EXPECT_DOUBLE_EQ(defaults.noisy_gd.params.eta, 1.0 / (0.5 + defaults.noisy_gd.params.lambda)) << "default eta: 1/(beta + lambda)";
  EXPECT_DOUBLE_EQ(defaults.noisy_gd.params.clip, std::sqrt(2.0));
  EXPECT_DOUBLE_EQ(defaults.noisy_gd.target_epsilon, 1.0);
  EXPECT_FALSE(defaults.noisy_gd.delta.has_value()) << "1/n";
  EXPECT_EQ(parse_job_config(std::string(kValid) + "noisy_gd:\n", "/cfg/job.yaml").noisy_gd.enabled, true)
      << "an empty section is the defaults";

  const auto set = parse_job_config(std::string(kValid) +
                                        "noisy_gd: {lambda: 0.1, eta: 1.5, sigma: 0.3, clip: 2, steps: 50, "
                                        "target_epsilon: 0.5, delta: 1e-6}\n",
                                    "/cfg/job.yaml");
  EXPECT_DOUBLE_EQ(set.noisy_gd.params.lambda, 0.1);
  EXPECT_DOUBLE_EQ(set.noisy_gd.params.eta, 1.5);
  EXPECT_DOUBLE_EQ(set.noisy_gd.params.sigma, 0.3);
  EXPECT_DOUBLE_EQ(set.noisy_gd.params.clip, 2.0);
  EXPECT_EQ(set.noisy_gd.train_steps, 50);
  EXPECT_DOUBLE_EQ(set.noisy_gd.target_epsilon, 0.5);
  EXPECT_DOUBLE_EQ(set.noisy_gd.delta.value(), 1e-6);
  const auto json = lethe::trainer::to_json(set).at("noisy_gd");
  EXPECT_EQ(json.at("steps"), 50);
  EXPECT_EQ(json.at("delta"), 1e-6);
  const auto& spec = set.noisy_gd;
  EXPECT_DOUBLE_EQ(spec.params.eta, 1.5);
  EXPECT_EQ(spec.train_steps, 50);
  EXPECT_DOUBLE_EQ(spec.delta.value(), 1e-6);

  const auto off = parse_job_config(std::string(kValid) + "noisy_gd: {enabled: false, sigma: 0.3}\n", "/cfg/job.yaml");
  EXPECT_FALSE(off.noisy_gd.enabled);
  EXPECT_EQ(lethe::trainer::config_digest(off), lethe::trainer::config_digest(without))
      << "a disabled section trains nothing, so it does not change the digest";
}

TEST(JobConfig, NoisyGdOnlyJobTurnsS3TOff) {
  const auto c = parse_job_config(with("selection: cyclic", "enabled: false") + "noisy_gd: {sigma: 0.1}\n", "/cfg/job.yaml");
  EXPECT_FALSE(c.s3t.enabled);
  EXPECT_TRUE(c.noisy_gd.enabled);
  EXPECT_EQ(c.model.sites, 1) << "no adapters without S3T";
  EXPECT_EQ(lethe::trainer::to_json(c).at("s3t").at("enabled"), false);
  // Without S3T, fewer blocks than s3t.slices is fine: no adapter sites are needed.
  EXPECT_NO_THROW((void)parse_job_config(with("slices: 3", "slices: 6, enabled: false") + "noisy_gd: {}\n", "/cfg/job.yaml"));
  // Nothing to train at all.
  EXPECT_NE(error_of(with("selection: cyclic", "enabled: false")).find("s3t.enabled"), std::string::npos);
  EXPECT_NE(error_of(with("selection: cyclic", "enabled: no way")).find("s3t.enabled: expected true or false"),
            std::string::npos);
}

TEST(JobConfig, NoisyGdErrorsNameTheKeyAndTheAssumption) {
  const auto error_with = [](const std::string& section) { return error_of(std::string(kValid) + section + "\n"); };
  EXPECT_NE(error_with("noisy_gd: {lambda: 0}").find("noisy_gd.lambda"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {lambda: -1}").find("strongly convex"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {sigma: 0}").find("noisy_gd.sigma"), std::string::npos);
  // eta <= 1/(beta + lambda) = 1/(0.5 + 0.5) = 1.
  const auto eta = error_with("noisy_gd: {lambda: 0.5, eta: 1.01}");
  EXPECT_NE(eta.find("/cfg/job.yaml: noisy_gd.eta: "), std::string::npos) << eta;
  EXPECT_NE(eta.find("1/(beta + lambda)"), std::string::npos) << eta;
  EXPECT_EQ(error_with("noisy_gd: {lambda: 0.5, eta: 1.0}"), "") << "the bound itself is allowed";
  EXPECT_NE(error_with("noisy_gd: {clip: 0}").find("noisy_gd.clip"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {steps: 0}").find("noisy_gd.steps"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {steps: 1.5}").find("noisy_gd.steps: expected an integer"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {target_epsilon: 0}").find("noisy_gd.target_epsilon"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {delta: 1}").find("noisy_gd.delta"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {sigma: lots}").find("noisy_gd.sigma: expected a number"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {epsilon: 1}").find("noisy_gd.epsilon: unknown key"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: [1, 2]").find("noisy_gd: must be a mapping"), std::string::npos);
  EXPECT_NE(error_with("noisy_gd: {enabled: maybe}").find("noisy_gd.enabled: expected true or false"), std::string::npos);
}

TEST(JobConfig, NoisyGdSettingsAreInTheDigest) {
  const auto base = parse_job_config(std::string(kValid) + "noisy_gd: {sigma: 0.1}\n", "/cfg/job.yaml");
  const auto other = parse_job_config(std::string(kValid) + "noisy_gd: {sigma: 0.2}\n", "/cfg/job.yaml");
  const auto none = parse_job_config(kValid, "/cfg/job.yaml");
  EXPECT_NE(lethe::trainer::config_digest(base), lethe::trainer::config_digest(other));
  EXPECT_NE(lethe::trainer::config_digest(base), lethe::trainer::config_digest(none));
  EXPECT_EQ(lethe::trainer::to_json(lethe::launch::with_job_dir(base, "/j")).at("noisy_gd").at("sigma"), 0.1) << "stored in the manifest";
}

TEST(JobConfig, PretrainDropoutThreadsAndMicroBatchesParseRoundTripAndCountOnlyWhenSet) {
  const auto none = parse_job_config(kValid, "/cfg/job.yaml");
  EXPECT_EQ(none.pretrain.dropout, 0.0);
  EXPECT_EQ(none.pretrain.threads, 0) << "0: the job's threads";
  const auto stored = lethe::trainer::to_json(none);
  EXPECT_FALSE(stored.at("pretrain").contains("dropout")) << "jobs from before the keys keep their digest";
  EXPECT_FALSE(stored.at("pretrain").contains("threads"));
  EXPECT_EQ(none.pretrain.micro_batches, 1);
  EXPECT_FALSE(stored.at("pretrain").contains("micro_batches"));

  const auto set = parse_job_config(std::string(kValid) + "pretrain: {dropout: 0.3, threads: 2, micro_batches: 4}\n", "/cfg/job.yaml");
  EXPECT_DOUBLE_EQ(set.pretrain.dropout, 0.3);
  EXPECT_EQ(set.pretrain.threads, 2);
  EXPECT_EQ(set.pretrain.micro_batches, 4);
  EXPECT_NE(lethe::trainer::config_digest(set), lethe::trainer::config_digest(none));
  const auto back = lethe::trainer::job_settings_from_json(lethe::trainer::to_json(set), "/j", "config.json");
  EXPECT_EQ(back.pretrain, set.pretrain);
  EXPECT_EQ(lethe::trainer::config_digest(back), lethe::trainer::config_digest(set));

  const auto pretrain = [](const std::string& values) { return error_of(std::string(kValid) + "pretrain: {" + values + "}\n"); };
  EXPECT_NE(pretrain("dropout: 1").find("pretrain.dropout: must be at least 0 and below 1"), std::string::npos);
  EXPECT_NE(pretrain("dropout: -0.1").find("pretrain.dropout: must be at least 0 and below 1"), std::string::npos);
  EXPECT_NE(pretrain("dropout: half").find("pretrain.dropout: expected a number"), std::string::npos);
  EXPECT_NE(pretrain("threads: 0").find("pretrain.threads: must be at least 1"), std::string::npos);
  EXPECT_NE(pretrain("micro_batches: 0").find("pretrain.micro_batches: must be at least 1"), std::string::npos);
  EXPECT_NE(pretrain("batch_size: 8, micro_batches: 9").find("pretrain.micro_batches: is 9, more than batch_size (8)"),
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
    EXPECT_EQ(c.model.sites, c.s3t.enabled ? c.s3t.slices : 1) << entry.path();
    ++parsed;
  }
  EXPECT_GE(parsed, 4);
}

// Issue 14 finding 11: a key given twice was silently read from its first line.
TEST(JobConfig, DuplicateKeysAreRefusedNamingTheKeyAndBothLines) {
  const auto top = error_of(with("seed: 7", "seed: 7\nseed: 8"));
  EXPECT_NE(top.find("/cfg/job.yaml: seed: appears twice, on lines 5 and 6"), std::string::npos) << top;
  const auto nested = error_of(with("epochs: 1,", "epochs: 1, epochs: 5,"));
  EXPECT_NE(nested.find("training.epochs: appears twice"), std::string::npos) << nested;
  const auto block = error_of(std::string(kValid) + "noisy_gd:\n  steps: 10\n  sigma: 0.1\n  steps: 20\n");
  EXPECT_NE(block.find("noisy_gd.steps: appears twice, on lines 10 and 12"), std::string::npos) << block;
}

// Issue 14 finding 11: huge numbers (threads: 100000, steps: 1e12, .inf) were accepted and reached
// allocations or libtorch; an integer too large for its type said "not an integer".
TEST(JobConfig, NumericSettingsAreRefusedOutsideTheirRangeNamingKeyValueAndRange) {
  const auto error_with = [](const std::string& section) { return error_of(std::string(kValid) + section + "\n"); };
  const auto expect = [](const std::string& message, const std::string& part) {
    EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
  };
  expect(error_with("threads: 100000"), "threads: 100000 is out of range (at most 1024): give an integer from 1 to 1024");
  expect(error_with("threads: 0"), "threads: must be at least 1");
  expect(error_with("noisy_gd: {steps: 1e12}"), "noisy_gd.steps: 1e12 is out of range (at most 10000000)");
  expect(error_of(with("shards: 2", "shards: 9223372036854775807")),
         "s3t.shards: 9223372036854775807 is out of range (at most 10000)");
  expect(error_of(with("shards: 2", "shards: 99999999999999999999999")), "s3t.shards: 99999999999999999999999 is out of range");
  expect(error_of(with("epochs: 1", "epochs: 1e12")), "training.epochs: 1e12 is out of range (at most 100000)");
  expect(error_of(with("batch_size: 32", "batch_size: 9000000000000")), "training.batch_size: 9000000000000 is out of range");
  expect(error_of(with("learning_rate: 0.01", "learning_rate: .inf")), "training.learning_rate: '.inf' is out of range");
  expect(error_of(with("learning_rate: 0.01", "learning_rate: 1e308")), "training.learning_rate: '1e308' is out of range");
  expect(error_with("noisy_gd: {lambda: .inf}"), "noisy_gd.lambda: '.inf' is out of range");
  expect(error_with("noisy_gd: {sigma: 1e308}"), "noisy_gd.sigma: '1e308' is out of range");
  expect(error_with("noisy_gd: {target_epsilon: .nan}"), "noisy_gd.target_epsilon: '.nan' is out of range");
  expect(error_of(with("widths: [64, 32, 32, 16]", "widths: [64, 1000000000, 32, 16]")),
         "model.widths[1]: 1000000000 is out of range (at most 65536)");
  expect(error_of(with("lora_rank: 2", "lora_rank: 100000000")), "model.lora_rank: 100000000 is out of range");
  expect(error_of(with("seed: 7", "seed: 18446744073709551616")), "seed: 18446744073709551616 is out of range");
  expect(error_of(with("seed: 7", "seed: 1.5")), "seed: expected a non-negative integer, got '1.5'");
  EXPECT_EQ(error_of(with("seed: 7", "seed: 18446744073709551615")), "") << "the largest seed is fine";
  EXPECT_EQ(error_with("threads: 1024"), "") << "the bound itself is allowed";
}
