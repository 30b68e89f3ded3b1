// The activation cache gives the same logits as the full forward pass at every prefix depth.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "trainer/activation_cache.h"
#include "trainer/model.h"

using namespace lethe::trainer;

TEST(ActivationCache, MatchesFullForwardAtEveryDepth) {
  for (auto arch : {Architecture::kMlp, Architecture::kCnn}) {
    ModelConfig c;
    c.architecture = arch;
    c.widths = arch == Architecture::kMlp ? std::vector<int64_t>{32, 24, 16, 12} : std::vector<int64_t>{4, 6, 8, 8};
    c.sites = 3;  // block 0 is a frozen stem
    c.input_height = c.input_width = 12;
    LetheModel model(c, 11);
    {
      torch::NoGradGuard g;
      for (int s = 1; s <= c.sites; ++s) model.site(s).lora_b().normal_(0, 0.1);
    }
    const auto x = torch::rand({37, 1, 12, 12});
    const auto cache = ActivationCache::build(model, x, 16);
    ASSERT_EQ(cache.size(), 37);
    EXPECT_GT(cache.bytes(), 0);
    torch::NoGradGuard g;
    for (int depth = 1; depth <= c.sites; ++depth) {
      model.set_active_depth(depth);
      const auto full = model.forward(x);
      const auto cached = model.forward_from_site(depth, cache.site_input(depth));
      EXPECT_TRUE(torch::allclose(full, cached, 1e-5, 1e-6)) << "depth " << depth;
      // Whatever lies below the active depth must not matter: that is what makes caching exact.
      {
        model.site(c.sites).lora_b().normal_(0, 1.0);
      }
      if (depth < c.sites) EXPECT_TRUE(torch::allclose(model.forward(x), full, 1e-5, 1e-6));
    }
  }
}

TEST(ActivationCache, EmptyInputGivesEmptySiteTensors) {
  ModelConfig c;
  c.widths = {8, 8};
  c.sites = 2;
  c.input_height = c.input_width = 4;
  LetheModel model(c, 1);
  const auto cache = ActivationCache::build(model, torch::zeros({0, 1, 4, 4}), 8);
  EXPECT_EQ(cache.site_input(1).size(0), 0);
  EXPECT_EQ(cache.site_input(1).size(1), 8);
  EXPECT_THROW((void)cache.site_input(3), std::out_of_range);
}
