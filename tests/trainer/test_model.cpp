// Models and LoRA: shapes, a fresh adapter is a zero delta, only intended parameters train.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "trainer/model.h"

using namespace lethe::trainer;

namespace {

ModelConfig small_mlp() {
  ModelConfig c;
  c.widths = {32, 24, 16};
  c.sites = 2;
  c.lora_rank = 2;
  c.lora_alpha = 4;
  c.input_height = 8;
  c.input_width = 8;
  return c;
}

ModelConfig small_cnn() {
  ModelConfig c = small_mlp();
  c.architecture = Architecture::kCnn;
  c.widths = {4, 6, 8};
  c.sites = 3;
  return c;
}

}  // namespace

TEST(Model, MlpAndCnnShapes) {
  for (const auto& config : {small_mlp(), small_cnn()}) {
    LetheModel model(config, 1);
    const auto x = torch::rand({5, 1, 8, 8});
    EXPECT_EQ(model.forward(x).sizes(), (std::vector<int64_t>{5, 10}));
    const auto inputs = model.site_inputs(x);
    ASSERT_EQ(static_cast<int>(inputs.size()), config.sites);
    for (int s = 1; s <= config.sites; ++s) {
      EXPECT_EQ(model.forward_from_site(s, inputs[static_cast<std::size_t>(s - 1)]).sizes(),
                (std::vector<int64_t>{5, 10}));
    }
  }
  // CNN: 8 -> 4 -> 2 -> 1, so 8 channels * 1 * 1 features.
  EXPECT_EQ(feature_dim(small_cnn()), 8);
  EXPECT_EQ(feature_dim(small_mlp()), 16);
}

TEST(Model, SameSeedSameWeightsDifferentSeedDifferentWeights) {
  LetheModel a(small_mlp(), 7), b(small_mlp(), 7), c(small_mlp(), 8);
  EXPECT_TRUE(torch::equal(a.block(0).weight(), b.block(0).weight()));
  EXPECT_FALSE(torch::equal(a.block(0).weight(), c.block(0).weight()));
}

TEST(Model, FreshAdapterIsZeroDeltaAndTrainedAdapterIsNot) {
  for (const auto& config : {small_mlp(), small_cnn()}) {
    LetheModel model(config, 3);
    const auto x = torch::rand({4, 1, 8, 8});
    const auto frozen = model.forward(x).detach();
    model.set_active_depth(config.sites);
    EXPECT_TRUE(torch::equal(model.forward(x), frozen)) << "B = 0 must leave the frozen model unchanged";
    EXPECT_GT(model.site(1).lora_a().abs().sum().item<float>(), 0.0f) << "A must be random so that B can learn";
    {
      torch::NoGradGuard g;
      model.site(1).lora_b().fill_(0.1);
    }
    EXPECT_FALSE(torch::allclose(model.forward(x), frozen));
    model.set_active_depth(0);  // inactive adapters add nothing, whatever their values
    EXPECT_TRUE(torch::equal(model.forward(x), frozen));
  }
}

TEST(Model, OnlyTheStepsAdapterAndTheHeadTrain) {
  LetheModel model(small_mlp(), 4);
  model.set_active_depth(2);
  auto trainable = model.select_trainable_for_step(2);
  ASSERT_EQ(trainable.size(), 4u);
  const auto before = model.backbone_and_head_tensors();
  std::vector<torch::Tensor> copies;
  for (auto& p : model.parameters()) copies.push_back(p.detach().clone());
  torch::optim::SGD sgd(trainable, 0.5);
  {  // B of site 2 is zero, so first make A's gradient non-zero with one step, then a second step.
    for (int k = 0; k < 2; ++k) {
      sgd.zero_grad();
      torch::cross_entropy_loss(model.forward(torch::rand({8, 1, 8, 8})), torch::randint(0, 10, {8})).backward();
      sgd.step();
    }
  }
  const auto params = model.named_parameters();
  std::size_t i = 0;
  for (const auto& item : params) {
    const bool changed = !torch::equal(item.value(), copies[i++]);
    const auto& name = item.key();
    const bool intended = name.rfind("head", 0) == 0 || name == "blocks_1.lora_A" || name == "blocks_1.lora_B";
    EXPECT_EQ(changed, intended) << name;
  }
  model.freeze_all();
  for (auto& p : model.parameters()) EXPECT_FALSE(p.requires_grad());
}

TEST(Model, InvalidConfigNamesTheKey) {
  auto c = small_mlp();
  c.sites = 5;
  try {
    LetheModel model(c, 1);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("model.sites"), std::string::npos) << e.what();
  }
}

TEST(Model, ConfigJsonRoundTrip) {
  const auto c = small_cnn();
  EXPECT_EQ(model_config_from_json(to_json(c)), c);
}

TEST(Model, PretrainingDropoutIsReproducibleAndSparesTheRecordsAndTheConvolutions) {
  ModelConfig convnet = small_mlp();
  convnet.architecture = Architecture::kConvnet;
  convnet.conv_widths = {3};
  for (const auto& config : {small_mlp(), convnet}) {
    LetheModel model(config, 5);
    const auto x = torch::rand({6, 1, 8, 8});
    const auto plain = model.forward_after_trunk(x);
    auto g1 = make_cpu_generator(9), g2 = make_cpu_generator(9), g3 = make_cpu_generator(10), g0 = make_cpu_generator(9);
    EXPECT_TRUE(torch::equal(model.forward_after_trunk(x, 0.0, &g0), plain)) << "dropout 0 is the plain forward";
    const auto a = model.forward_after_trunk(x, 0.5, &g1);
    EXPECT_TRUE(torch::equal(a, model.forward_after_trunk(x, 0.5, &g2))) << "the same masks for the same seed";
    EXPECT_FALSE(torch::equal(a, model.forward_after_trunk(x, 0.5, &g3)));
    EXPECT_FALSE(torch::allclose(a, plain));
    // Block 0 (the MLP's first dense block, on the records; the convnet's convolution) sees no dropout.
    auto g4 = make_cpu_generator(9);
    EXPECT_TRUE(torch::equal(model.run_blocks(x, 0, 1, 0.9, &g4), model.run_blocks(x, 0, 1)));
  }
}
