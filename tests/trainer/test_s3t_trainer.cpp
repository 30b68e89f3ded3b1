// S3T step training on in-memory tensors: prefix semantics, exactness, determinism, resume, cache = full pass.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "trainer/activation_cache.h"
#include "trainer/ensemble.h"
#include "trainer/s3t_trainer.h"

using namespace lethe::trainer;

namespace {

ModelConfig config() {
  ModelConfig c;
  c.widths = {48, 32, 24};
  c.sites = 3;
  c.lora_rank = 2;
  c.lora_alpha = 4;
  c.input_height = c.input_width = 6;
  c.num_classes = 3;
  return c;
}

// Three Gaussian blobs in 36 dimensions: learnable in a few epochs.
struct Data {
  torch::Tensor x, y;
  std::vector<int> slices;
};

Data make_data(std::int64_t n, std::uint64_t seed) {
  auto gen = make_cpu_generator(seed);
  Data d;
  d.y = torch::randint(0, 3, {n}, gen, torch::kInt64);
  const auto centers = torch::rand({3, 36}, gen, torch::kFloat32);
  d.x = (centers.index_select(0, d.y) + 0.15 * torch::randn({n, 36}, gen, torch::kFloat32)).reshape({n, 1, 6, 6});
  for (std::int64_t r = 0; r < n; ++r) d.slices.push_back(static_cast<int>(r % 3));
  return d;
}

OptimizerSettings options() { return OptimizerSettings{3, 16, 5e-3}; }

std::vector<PrefixState> train(const Data& d, const std::vector<int>& order, std::uint64_t seed,
                               const PrefixState* resume = nullptr) {
  LetheModel model(config(), 5);
  const auto cache = ActivationCache::build(model, d.x, 32);
  S3TTrainer trainer(model, options());
  std::vector<PrefixState> prefixes;
  (void)trainer.train_sequence(cache, d.y, d.slices, order, seed, resume,
                               [&](const PrefixState& p) { prefixes.push_back(p); });
  return prefixes;
}

const torch::Tensor& get(const PrefixState& p, const std::string& name) {
  for (const auto& [n, t] : p.tensors) {
    if (n == name) return t;
  }
  throw std::runtime_error("missing " + name);
}

bool same(const PrefixState& a, const PrefixState& b) {
  if (a.prefix != b.prefix || a.tensors.size() != b.tensors.size()) return false;
  for (std::size_t i = 0; i < a.tensors.size(); ++i) {
    if (a.tensors[i].first != b.tensors[i].first || !torch::equal(a.tensors[i].second, b.tensors[i].second)) return false;
  }
  return true;
}

}  // namespace

TEST(S3TTrainer, PrefixRecordsAreTheUnionOfTheFirstSlices) {
  const std::vector<int> slices{0, 1, 2, 0, 2, 1};
  EXPECT_EQ(S3TTrainer::prefix_records(slices, {2, 0, 1}, 1), (std::vector<std::int64_t>{2, 4}));
  EXPECT_EQ(S3TTrainer::prefix_records(slices, {2, 0, 1}, 2), (std::vector<std::int64_t>{0, 2, 3, 4}));
  EXPECT_EQ(S3TTrainer::prefix_records(slices, {2, 0, 1}, 3).size(), 6u);
}

TEST(S3TTrainer, PrefixCheckpointsHoldTopAdaptersAndFrozenSitesAboveStayFixed) {
  const auto d = make_data(120, 1);
  const auto prefixes = train(d, {1, 2, 0}, 42);
  ASSERT_EQ(prefixes.size(), 3u);
  for (int i = 1; i <= 3; ++i) {
    const auto& p = prefixes[static_cast<std::size_t>(i - 1)];
    EXPECT_EQ(p.prefix, i);
    EXPECT_EQ(p.tensors.size(), static_cast<std::size_t>(2 * i + 2));
  }
  // Site 1's adapter is frozen after step 1: identical in P_1, P_2, P_3; the head keeps training.
  EXPECT_TRUE(torch::equal(get(prefixes[0], "site1.lora_B"), get(prefixes[2], "site1.lora_B")));
  EXPECT_TRUE(torch::equal(get(prefixes[1], "site2.lora_A"), get(prefixes[2], "site2.lora_A")));
  EXPECT_FALSE(torch::equal(get(prefixes[0], "head.weight"), get(prefixes[1], "head.weight")));
  EXPECT_GT(get(prefixes[0], "site1.lora_B").abs().sum().item<float>(), 0.0f) << "the adapter must have trained";
}

TEST(S3TTrainer, ChangingTheLastSliceLeavesEarlierPrefixesUntouched) {
  // Exactness: P_1 and P_2 never saw slice π(3), so changing its records must not change them.
  const auto d = make_data(120, 2);
  auto changed = d;
  changed.x = d.x.clone();
  for (std::int64_t r = 0; r < 120; ++r) {
    if (d.slices[static_cast<std::size_t>(r)] == 0) changed.x[r] = torch::rand({1, 6, 6});
  }
  const auto a = train(d, {1, 2, 0}, 9);
  const auto b = train(changed, {1, 2, 0}, 9);
  EXPECT_TRUE(same(a[0], b[0]));
  EXPECT_TRUE(same(a[1], b[1]));
  EXPECT_FALSE(same(a[2], b[2]));
}

TEST(S3TTrainer, DeterministicAndSeedSensitive) {
  const auto d = make_data(90, 3);
  const auto a = train(d, {0, 1, 2}, 5);
  const auto b = train(d, {0, 1, 2}, 5);
  const auto c = train(d, {0, 1, 2}, 6);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(same(a[static_cast<std::size_t>(i)], b[static_cast<std::size_t>(i)]));
  EXPECT_FALSE(same(a[2], c[2]));
}

TEST(S3TTrainer, ResumingFromAPrefixGivesIdenticalResults) {
  const auto d = make_data(90, 4);
  const auto full = train(d, {2, 0, 1}, 77);
  const auto resumed = train(d, {2, 0, 1}, 77, &full[0]);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_TRUE(same(resumed[0], full[1]));
  EXPECT_TRUE(same(resumed[1], full[2]));
}

TEST(S3TTrainer, CachedTrainingMatchesTheFullForwardPass) {
  const auto d = make_data(96, 5);
  LetheModel cached_model(config(), 5), full_model(config(), 5);
  const auto cache = ActivationCache::build(cached_model, d.x, 32);
  std::vector<PrefixState> cached, full;
  S3TTrainer(cached_model, options())
      .train_sequence(cache, d.y, d.slices, {1, 0, 2}, 3, nullptr, [&](const PrefixState& p) { cached.push_back(p); });
  const auto stats = S3TTrainer(full_model, options())
                         .train_sequence_uncached(d.x, d.y, d.slices, {1, 0, 2}, 3, nullptr,
                                                  [&](const PrefixState& p) { full.push_back(p); });
  EXPECT_EQ(stats.samples, 3 * (32 + 64 + 96));
  ASSERT_EQ(cached.size(), full.size());
  for (std::size_t i = 0; i < cached.size(); ++i) {
    for (std::size_t t = 0; t < cached[i].tensors.size(); ++t) {
      EXPECT_TRUE(torch::allclose(cached[i].tensors[t].second, full[i].tensors[t].second, 1e-4, 1e-5))
          << "prefix " << i + 1 << " tensor " << cached[i].tensors[t].first;
    }
  }
}

TEST(S3TTrainer, MismatchedSequenceLengthIsAnError) {
  const auto d = make_data(30, 6);
  LetheModel model(config(), 5);
  const auto cache = ActivationCache::build(model, d.x, 32);
  S3TTrainer trainer(model, options());
  EXPECT_THROW((void)trainer.train_sequence(cache, d.y, d.slices, {0, 1}, 1, nullptr, {}), std::invalid_argument);
}

TEST(Ensemble, AveragesLiveShardsAndLearnsTheTask) {
  const auto train_data = make_data(150, 7);
  auto test = make_data(150, 7);  // same blobs (same seed), so the task is learnable
  LetheModel model(config(), 5);
  std::vector<EnsembleMember> members;
  for (int shard = 0; shard < 2; ++shard) {
    const auto prefixes = train(train_data, {shard, 2, 1 - shard}, 10 + shard);
    members.push_back({shard, 0, prefixes.back()});
  }
  const auto probs = ensemble_probabilities(model, members, test.x, 64);
  EXPECT_TRUE(torch::allclose(probs.sum(1), torch::ones({150}), 1e-5, 1e-5));
  EXPECT_GT(accuracy(probs, test.y), 0.9);
  // A dead shard (depth 0) is skipped: the ensemble equals the other member alone.
  auto one_dead = members;
  one_dead[1].state.prefix = 0;
  std::vector<EnsembleMember> alone{members[0]};
  EXPECT_TRUE(torch::allclose(ensemble_probabilities(model, one_dead, test.x, 64),
                              ensemble_probabilities(model, alone, test.x, 64)));
  one_dead[0].state.prefix = 0;
  EXPECT_THROW((void)ensemble_probabilities(model, one_dead, test.x, 64), std::runtime_error);
}

TEST(Ensemble, AccuracyCountsArgmaxMatches) {
  const auto probs = torch::tensor({0.9f, 0.1f, 0.2f, 0.8f, 0.6f, 0.4f}).reshape({3, 2});
  EXPECT_DOUBLE_EQ(accuracy(probs, torch::tensor({0, 1, 1}, torch::kInt64)), 2.0 / 3.0);
}
