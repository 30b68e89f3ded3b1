// End to end: a frozen TorchScript trunk (model.trunk, trainer/trunk.h) under Lethe's blocks, with
// the real `lethe` binary on the fixture's 6x6 records: pretrain, train (S3T and noisy GD, one and
// two ranks), eval, and the bad inputs refused with an error naming the file and what to do. The
// trunks are tests/data/*.pt, written by tests/data/make_trunks.py with Debian's python3-torch, and
// one by tests/data/make_torch2_trunk.py with torch 2.x.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include "storage/hashing.h"
#include "tests/trainer/cli_job_fixture.h"
#include "trainer/trunk.h"

namespace lethe::test {
namespace {

using nlohmann::json;

class TrunkTest : public CliJobTest {
 protected:
  // Copies tests/data/<name> into the scratch directory as <as> (default: the same name).
  fs::path trunk(const std::string& name, const std::string& as = "") {
    const auto to = dir_ / (as.empty() ? name : as);
    fs::copy_file(fs::path(LETHE_TEST_DATA_DIR) / name, to, fs::copy_options::overwrite_existing);
    return to;
  }
  // A job config whose model section is `model` (a YAML flow mapping's inside).
  fs::path config(const std::string& model, bool noisy_gd = true, const std::string& name = "job.yaml") {
    std::ofstream out(dir_ / name);
    out << "dataset: train.h5\ntest_dataset: test.h5\nbackbone: backbone.h5\njob_dir: run\nseed: 11\n"
        << "s3t: {shards: 2, slices: 2, sequences: 2}\n"
        << "model: {" << model << ", lora_rank: 2, lora_alpha: 4, num_classes: 3}\n"
        << "training: {epochs: 2, batch_size: 16, learning_rate: 0.005}\n"
        << "pretrain: {epochs: 6, batch_size: 16, learning_rate: 0.01}\n";
    if (noisy_gd) out << "noisy_gd: {lambda: 0.05, sigma: 0.05, steps: 60, target_epsilon: 1.0}\n";
    return dir_ / name;
  }
  [[nodiscard]] json manifest() const { return json::parse(read_text(dir_ / "run" / "manifest.json")); }
  CommandResult eval() { return run_command(lethe_cmd() + " eval --job " + (dir_ / "run").string()); }
};

TEST_F(TrunkTest, PretrainsTrainsAndEvaluatesBlocksOnAFrozenTrunkAndKeepsItsCopyInTheJob) {
  const auto file = trunk("trunk_flat.pt", "trunk.pt");
  const auto cfg = config("architecture: mlp, trunk: trunk.pt, widths: [24, 16]");
  const auto pre = pretrain(cfg);
  ASSERT_EQ(pre.status, 0) << pre.out;
  const auto pj = json_of(pre);
  EXPECT_EQ(pj.at("model").at("trunk").at("sha256"), storage::sha256_file(file));
  EXPECT_EQ(pj.at("model").at("trunk").at("input_shape"), json::array({6, 6}));
  EXPECT_EQ(pj.at("model").at("trunk").at("output_shape"), json::array({20}));
  EXPECT_GT(pj.at("head_accuracy").get<double>(), 0.6) << pre.out;  // 3 classes: chance is 1/3

  const auto trained = train(cfg, dir_ / "run");
  ASSERT_EQ(trained.status, 0) << trained.out;
  const auto m = manifest();
  EXPECT_EQ(m.at("trunk").at("file"), "trunk.pt");
  EXPECT_EQ(m.at("model").at("trunk").at("sha256"), storage::sha256_file(file));
  EXPECT_EQ(read_text(dir_ / "run" / "trunk.pt"), read_text(file)) << "the job keeps its own copy of the trunk";
  EXPECT_EQ(m.at("config").at("trunk"), fs::relative(file, dir_ / "run").string());

  const auto e = eval();
  ASSERT_EQ(e.status, 0) << e.out;
  const auto ej = json_of(e);
  ASSERT_EQ(ej.at("models").size(), 2u) << e.out;
  for (const auto& model : ej.at("models")) EXPECT_GT(model.at("accuracy").get<double>(), 0.6) << model.dump();

  // The job stands on its copy: the configured file may go; a job whose copy changed is refused.
  fs::remove(file);
  ASSERT_EQ(eval().status, 0) << "the job should not need the configured trunk file";
  trunk("trunk_flat_other.pt", "run/trunk.pt");
  const auto changed = eval();
  EXPECT_NE(changed.status, 0);
  EXPECT_NE(changed.out.find("is not the trunk job"), std::string::npos) << changed.out;
  EXPECT_NE(changed.out.find("trunk.pt"), std::string::npos) << changed.out;
}

TEST_F(TrunkTest, ConvTrunkUnderConvolutionBlocksTrainsTheSameModelsOnTwoRanksAsOnOne) {
  trunk("trunk_conv.pt");
  const auto cfg = config("architecture: convnet, trunk: trunk_conv.pt, conv_widths: [8], widths: [16, 12]");
  const auto pre = pretrain(cfg);
  ASSERT_EQ(pre.status, 0) << pre.out;
  EXPECT_EQ(json_of(pre).at("model").at("trunk").at("output_shape"), json::array({4, 6, 6}));
  const auto one = train(cfg, dir_ / "one");
  ASSERT_EQ(one.status, 0) << one.out;
  const auto two = train(cfg, dir_ / "two", 2);
  ASSERT_EQ(two.status, 0) << two.out;
  // Same checkpoints bit for bit: the trunk runs identically wherever a shard is trained.
  EXPECT_EQ(json_of(one).at("s3t").at("digests"), json_of(two).at("s3t").at("digests"));
  EXPECT_EQ(json_of(one).at("noisy_gd").at("digest"), json_of(two).at("noisy_gd").at("digest"));
}

// A trunk saved by PyTorch 2.x (tests/data/make_torch2_trunk.py: convolutions, batch norm, a
// residual block, GELU, adaptive pooling) computes in the libtorch Lethe is built against what
// PyTorch computed when it saved the file, and Lethe's blocks pretrain, train and evaluate on it.
TEST_F(TrunkTest, ATrunkSavedByTorch2ComputesWhatPyTorchComputedAndTrains) {
  const auto file = trunk("trunk_resnet_torch2.pt", "trunk.pt");
  const auto reference = json::parse(read_text(fs::path(LETHE_TEST_DATA_DIR) / "trunk_resnet_torch2.json"));
  ASSERT_EQ(reference.at("torch").get<std::string>().substr(0, 2), "2.") << "the file must come from torch 2.x";
  // Nested JSON lists, flattened in order.
  const auto as_tensor = [](const json& nested) {
    std::vector<float> values;
    const auto flatten = [&values](const json& j, const auto& self) -> void {
      if (!j.is_array()) return values.push_back(j.get<float>());
      for (const auto& item : j) self(item, self);
    };
    flatten(nested, flatten);
    return torch::tensor(values);
  };
  const auto inputs = as_tensor(reference.at("inputs")).reshape({4, 6, 6});
  const auto expected = as_tensor(reference.at("outputs")).reshape({4, 16});
  const auto outputs = trainer::Trunk::load(file, "cpu")->forward(inputs);
  ASSERT_EQ(outputs.sizes(), expected.sizes());
  EXPECT_TRUE(torch::allclose(outputs, expected, 1e-5, 1e-6))
      << "largest difference " << (outputs - expected).abs().max().item<float>() << " from torch "
      << reference.at("torch");

  const auto cfg = config("architecture: mlp, trunk: trunk.pt, widths: [24, 16]");
  const auto pre = pretrain(cfg);
  ASSERT_EQ(pre.status, 0) << pre.out;
  EXPECT_EQ(json_of(pre).at("model").at("trunk").at("output_shape"), json::array({16}));
  const auto trained = train(cfg, dir_ / "run", 2);
  ASSERT_EQ(trained.status, 0) << trained.out;
  const auto e = eval();
  ASSERT_EQ(e.status, 0) << e.out;
  EXPECT_EQ(json_of(e).at("models").size(), 2u) << e.out;
}

TEST_F(TrunkTest, BadTrunksAreRefusedNamingTheFileAndTheShapesAndWriteNoBackbone) {
  struct Case {
    std::string model, expect_a, expect_b;
  };
  std::ofstream(dir_ / "not_torchscript.pt") << "this is a text file, not a model";
  trunk("trunk_flat.pt");
  trunk("trunk_rank3.pt");
  const std::vector<Case> cases = {
      {"architecture: mlp, trunk: not_torchscript.pt, widths: [8, 8]", "not_torchscript.pt", "is not a TorchScript file"},
      {"architecture: mlp, trunk: missing.pt, widths: [8, 8]", "model.trunk", "missing.pt does not exist"},
      {"architecture: convnet, trunk: trunk_flat.pt, conv_widths: [4], widths: [8]", "[N, 20]", "convnet"},
      {"architecture: mlp, trunk: trunk_rank3.pt, widths: [8, 8]", "[2, 6, 6]", "[N, D] or [N, C, H, W]"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.model);
    const auto cfg = config(c.model, false);
    const auto pre = pretrain(cfg);
    EXPECT_EQ(pre.status, 1) << pre.out;
    EXPECT_NE(pre.out.find(c.expect_a), std::string::npos) << pre.out;
    EXPECT_NE(pre.out.find(c.expect_b), std::string::npos) << pre.out;
    EXPECT_FALSE(fs::exists(dir_ / "backbone.h5"));
    const auto validate = run_command(lethe_cmd() + " validate --config " + cfg.string());
    EXPECT_NE(validate.status, 0) << validate.out;
    EXPECT_NE(validate.out.find(c.expect_b), std::string::npos) << validate.out;
  }
}

TEST_F(TrunkTest, ATrunkReplacedAfterPretrainingOrDroppedFromTheConfigIsRefusedByTrain) {
  trunk("trunk_flat.pt", "trunk.pt");
  const auto cfg = config("architecture: mlp, trunk: trunk.pt, widths: [24, 16]", false);
  const auto pre = pretrain(cfg);
  ASSERT_EQ(pre.status, 0) << pre.out;

  trunk("trunk_flat_other.pt", "trunk.pt");  // same shapes, other weights
  const auto replaced = train(cfg, dir_ / "run");
  EXPECT_EQ(replaced.status, 1) << replaced.out;
  EXPECT_NE(replaced.out.find("was pretrained on trunk"), std::string::npos) << replaced.out;
  EXPECT_NE(replaced.out.find("lethe pretrain"), std::string::npos) << replaced.out;

  // The backbone's blocks take the trunk's 20 features; without the trunk they would take 36 pixels.
  const auto without = train(config("architecture: mlp, widths: [24, 16]", false, "plain.yaml"), dir_ / "plain");
  EXPECT_EQ(without.status, 1) << without.out;
  EXPECT_NE(without.out.find("backbone.h5"), std::string::npos) << without.out;
}

}  // namespace
}  // namespace lethe::test
