// Unit tests of the noisy-GD softmax regression: features, noise, gradient and clipping,
// determinism across 1, 2 and 3 in-process ranks, deletion receipts, retraining, persistence.
#include <gtest/gtest.h>

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <mutex>
#include <string>
#include <unistd.h>
#include <vector>

#include "comm/in_process.h"
#include "tests/storage/scratch_files.h"
#include "tests/trainer/test_noisy_gd_fixtures.h"
#include "trainer/noisy_gd.h"

using namespace lethe::trainer;
using namespace lethe::trainer::testing;
using lethe::comm::Communicator;

namespace {

std::unique_ptr<Communicator> single_rank() { return std::move(lethe::comm::make_in_process_world(1).front()); }

std::vector<std::int64_t> range(std::int64_t begin, std::int64_t end) {
  std::vector<std::int64_t> out;
  for (std::int64_t i = begin; i < end; ++i) out.push_back(i);
  return out;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST(NoisyGdFeatures, NormalizeAppendsBiasAndHasUnitNorm) {
  const at::Tensor x = torch::tensor({3.0, 4.0, 0.0, 0.0, 100.0, -7.0}, torch::kFloat32).reshape({3, 2});
  const at::Tensor phi = normalize_features(x);
  ASSERT_EQ(phi.sizes(), (std::vector<std::int64_t>{3, 3}));
  EXPECT_EQ(phi.scalar_type(), torch::kFloat64);
  EXPECT_LT((phi.norm(2, {1}) - 1.0).abs().max().item<double>(), 1e-15);
  // [3, 4, 1] / sqrt(26) and [0, 0, 1] / 1.
  EXPECT_NEAR(phi[0][0].item<double>(), 3.0 / std::sqrt(26.0), 1e-15);
  EXPECT_NEAR(phi[0][2].item<double>(), 1.0 / std::sqrt(26.0), 1e-15);
  EXPECT_EQ(phi[1][2].item<double>(), 1.0);
  EXPECT_THROW((void)normalize_features(torch::ones({3}, torch::kFloat64)), NoisyGdError);
}

TEST(NoisyGdNoise, DeterministicStandardNormalPerStep) {
  const at::Tensor a = step_noise(7, 3, 100, 1000);
  EXPECT_TRUE(torch::equal(a, step_noise(7, 3, 100, 1000)));
  EXPECT_FALSE(torch::equal(a, step_noise(7, 4, 100, 1000)));
  EXPECT_FALSE(torch::equal(a, step_noise(8, 3, 100, 1000)));
  // Moments of 1e5 draws: standard errors ~0.003 (mean), ~0.0045 (variance).
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.015);
  EXPECT_NEAR(a.var().item<double>(), 1.0, 0.025);
  EXPECT_NEAR(a.pow(4).mean().item<double>(), 3.0, 0.1);
  const at::Tensor b = step_noise(7, 4, 100, 1000);
  EXPECT_NEAR((a * b).mean().item<double>(), 0.0, 0.015);  // steps are uncorrelated
  const at::Tensor flat = a.flatten();  // neighbours (the two Box-Muller outputs) are uncorrelated
  EXPECT_NEAR((flat.slice(0, 0, -1) * flat.slice(0, 1)).mean().item<double>(), 0.0, 0.015);
  // Shape does not change the values of a prefix: element i depends only on (seed, step, i).
  EXPECT_TRUE(torch::equal(step_noise(7, 3, 1, 5).flatten(), a.flatten().slice(0, 0, 5)));
}

TEST(NoisyGdGradient, MatchesAutogradOfTheObjective) {
  auto comm = single_rank();
  NoisyGdModel model(small_config(1), *comm);
  const LocalData data = synthetic_data(50, 11);
  model.train(data);  // move theta away from 0
  at::Tensor theta = model.weights().clone().requires_grad_(true);
  const at::Tensor objective =
      torch::nn::functional::cross_entropy(data.features.mm(theta), data.labels) + 0.5 * 0.1 * theta.pow(2).sum();
  objective.backward();
  EXPECT_LT(max_abs_diff(model.full_gradient(data), theta.grad()), 1e-14);
}

// The plain float64 gradient on the whole data (torch ops): mean of clip(x (p - e_y)^T) + lambda theta.
at::Tensor reference_gradient(const LocalData& data, const at::Tensor& theta, double lambda, double clip) {
  const at::Tensor residual = torch::softmax(data.features.mm(theta), 1) -
                              torch::one_hot(data.labels, theta.size(1)).to(torch::kFloat64);
  const at::Tensor norms = data.features.norm(2, {1}) * residual.norm(2, {1});
  const at::Tensor scale = torch::where(norms > clip, clip / norms, torch::ones_like(norms));
  return data.features.t().mm(residual * scale.unsqueeze(1)) / static_cast<double>(data.labels.size(0)) +
         lambda * theta;
}

TEST(NoisyGdGradient, TiledExactSumsMatchAPlainFloat64Gradient) {
  // 1000 rows in blocks of 256 (the last short) and in one block: 4 tiles either way.
  LocalData data = synthetic_data(1000, 13, 0.3);
  for (const double clip : {std::sqrt(2.0), 0.3}) {
    NoisyGdConfig config = small_config(7);
    config.settings.params.clip = clip;
    config.settings.params.sigma = 1.0;  // big noise: large weights, softmax near its extremes
    config.settings.train_steps = 30;
    auto comm = single_rank();
    NoisyGdModel model(config, *comm);
    model.train(data);
    ASSERT_GT(model.weights().abs().max().item<double>(), 1.0);
    const at::Tensor expected = reference_gradient(data, model.weights(), config.settings.params.lambda, clip);
    for (const auto& ends : {std::vector<std::int64_t>{}, std::vector<std::int64_t>{256, 512, 768, 1000},
                             std::vector<std::int64_t>{1, 300, 999, 1000}}) {
      data.block_ends = ends;
      EXPECT_LT(max_abs_diff(model.full_gradient(data), expected), 1e-12) << "clip " << clip << ", " << ends.size() << " ends";
    }
    data.block_ends.clear();
  }
}

TEST(NoisyGdGradient, ClipAtSqrtTwoChangesNothingAndBelowItDoes) {
  const LocalData data = synthetic_data(80, 12, 0.3);
  auto comm = single_rank();
  // Large weights push softmax to its extremes, where ||p - e_y|| approaches sqrt 2.
  const auto trained_with_clip = [&](double clip) {
    NoisyGdConfig config = small_config(2);
    config.settings.params.clip = clip;
    config.settings.params.sigma = 3.0;  // big noise: big weights
    NoisyGdModel model(config, *comm);
    model.train(data);
    return model;
  };
  NoisyGdModel at_bound = trained_with_clip(std::sqrt(2.0));
  NoisyGdModel far_above = trained_with_clip(1e6);
  EXPECT_TRUE(torch::equal(at_bound.weights(), far_above.weights()));
  EXPECT_GT(at_bound.weights().abs().max().item<double>(), 5.0);
  const at::Tensor p = torch::softmax(data.features.mm(at_bound.weights()), 1);
  const at::Tensor residual = p - torch::one_hot(data.labels, kClasses).to(torch::kFloat64);
  const at::Tensor norms = data.features.norm(2, {1}) * residual.norm(2, {1});
  EXPECT_LE(norms.max().item<double>(), std::sqrt(2.0));
  EXPECT_GT(norms.max().item<double>(), 1.0);  // the bound is nearly reached

  NoisyGdModel below = trained_with_clip(0.5);
  EXPECT_GT(max_abs_diff(below.weights(), at_bound.weights()), 1e-3);
  const DeletionReceipt receipt = below.delete_records(rows_of(data, 0, 75));
  EXPECT_FALSE(receipt.certified);
  EXPECT_FALSE(to_json(receipt).at("certified").get<bool>());
}

TEST(NoisyGdTraining, LearnsAndIsDeterministicForASeed) {
  const LocalData train = synthetic_data(300, 21);
  const LocalData test = synthetic_data(300, 22);
  auto comm = single_rank();
  NoisyGdModel a(small_config(5), *comm);
  NoisyGdModel b(small_config(5), *comm);
  NoisyGdModel c(small_config(6), *comm);
  a.train(train);
  b.train(train);
  c.train(train);
  EXPECT_TRUE(torch::equal(a.weights(), b.weights()));
  EXPECT_GT(max_abs_diff(a.weights(), c.weights()), 1e-3);
  EXPECT_EQ(a.steps_taken(), 100);
  // Bayes accuracy of these classes is about 0.78; a trivial classifier gets ~0.33.
  EXPECT_GT(a.accuracy(test), 0.65);
  const at::Tensor losses = a.example_losses(test.features, test.labels);
  EXPECT_EQ(losses.size(0), 300);
  EXPECT_TRUE((losses > 0).all().item<bool>());
}

TEST(NoisyGdDistributed, SameModelOnOneTwoAndThreeRanks) {
  const LocalData data = synthetic_data(101, 31, 0.1);  // 101: uneven shares
  const std::vector<std::int64_t> keep = range(7, 101);
  const LocalData remaining = select(data, keep);

  auto comm = single_rank();
  NoisyGdModel reference(small_config(9), *comm);
  reference.train(data);
  const DeletionReceipt reference_receipt = reference.delete_records(remaining);
  ASSERT_GT(reference_receipt.unlearning_steps, 0);

  for (const int world : {2, 3}) {
    std::mutex mutex;
    std::vector<at::Tensor> weights(static_cast<std::size_t>(world));
    std::vector<DeletionReceipt> receipts(static_cast<std::size_t>(world));
    lethe::comm::run_in_process(world, [&](Communicator& rank_comm) {
      NoisyGdModel model(small_config(9), rank_comm);
      model.train(share_of(data, rank_comm.rank(), world));
      const DeletionReceipt receipt = model.delete_records(share_of(remaining, rank_comm.rank(), world));
      const std::lock_guard lock(mutex);
      weights[static_cast<std::size_t>(rank_comm.rank())] = model.weights().clone();
      receipts[static_cast<std::size_t>(rank_comm.rank())] = receipt;
    });
    for (int r = 0; r < world; ++r) {
      const auto i = static_cast<std::size_t>(r);
      EXPECT_TRUE(torch::equal(weights[i], weights[0])) << "rank " << r << " of " << world;
      EXPECT_LT(max_abs_diff(weights[i], reference.weights()), 1e-11) << "rank " << r << " of " << world;
      EXPECT_EQ(receipts[i].unlearning_steps, reference_receipt.unlearning_steps);
      EXPECT_EQ(receipts[i].deleted, 7);
      EXPECT_DOUBLE_EQ(receipts[i].epsilon, reference_receipt.epsilon);
    }
  }
}

TEST(NoisyGdDeletion, ReceiptFollowsTheAccountant) {
  const LocalData data = synthetic_data(60, 41);
  auto comm = single_rank();
  NoisyGdModel model(small_config(3), *comm);
  model.train(data);
  Accountant expected(small_config(3).settings.params, 60);
  expected.record_training(100);
  expected.record_deletion(6);
  const DeletionPlan plan = expected.plan_deletion(1.0);

  const at::Tensor before = model.weights().clone();
  const DeletionReceipt receipt = model.delete_records(rows_of(data, 6, 60));
  EXPECT_EQ(receipt.deleted, 6);
  EXPECT_EQ(receipt.n_before, 60);
  EXPECT_EQ(receipt.n_after, 54);
  EXPECT_EQ(receipt.unlearning_steps, plan.steps);
  EXPECT_EQ(receipt.steps_run, plan.steps);
  EXPECT_FALSE(receipt.retrained);
  EXPECT_DOUBLE_EQ(receipt.epsilon, plan.unlearning.epsilon);
  EXPECT_LE(receipt.epsilon, 1.0);
  EXPECT_DOUBLE_EQ(receipt.delta, 1.0 / 60);
  EXPECT_DOUBLE_EQ(receipt.z, plan.z);
  EXPECT_TRUE(receipt.certified);
  EXPECT_GT(receipt.wall_seconds, 0.0);
  EXPECT_EQ(model.steps_taken(), 100 + plan.steps);
  EXPECT_GT(max_abs_diff(before, model.weights()), 1e-3);
  const std::vector<Phase> history{{60, 100, 6}, {54, plan.steps, 0}};
  EXPECT_EQ(model.accountant().history(), history);

  const nlohmann::json json = to_json(receipt);
  EXPECT_EQ(json.at("route"), "noisy_steps");
  EXPECT_EQ(json.at("unlearning_steps").get<std::int64_t>(), plan.steps);
  EXPECT_DOUBLE_EQ(json.at("assumptions").at("lambda").get<double>(), 0.1);
  EXPECT_EQ(json.at("assumptions").at("n").get<std::int64_t>(), 54);

  // A second deletion sees both phases.
  const DeletionReceipt second = model.delete_records(rows_of(data, 10, 60));
  EXPECT_EQ(second.deleted, 4);
  EXPECT_EQ(model.accountant().history().front(), (Phase{60, 100, 10}));
}

TEST(NoisyGdDeletion, RetrainsWhenUnlearningCostsMore) {
  const LocalData data = synthetic_data(60, 51);
  auto comm = single_rank();
  NoisyGdConfig config = small_config(4);
  config.settings.train_steps = 20;
  config.settings.target_epsilon = 0.01;  // K_U far above 20 steps
  NoisyGdModel model(config, *comm);
  model.train(data);
  const DeletionReceipt receipt = model.delete_records(rows_of(data, 30, 60));
  EXPECT_TRUE(receipt.retrained);
  EXPECT_GT(receipt.unlearning_steps, 20);
  EXPECT_EQ(receipt.steps_run, 20);
  EXPECT_EQ(receipt.epsilon, 0.0);
  EXPECT_EQ(receipt.delta, 0.0);
  EXPECT_EQ(to_json(receipt).at("route"), "retrain");
  EXPECT_EQ(model.accountant().history(), (std::vector<Phase>{{30, 20, 0}}));
  EXPECT_EQ(model.accountant().distance_bound(), 0.0);
  EXPECT_EQ(model.steps_taken(), 40);  // fresh noise: the retrain does not reuse steps 0..19
}

TEST(NoisyGdDeletion, RefusesInconsistentData) {
  const LocalData data = synthetic_data(20, 61);
  auto comm = single_rank();
  NoisyGdModel model(small_config(1), *comm);
  EXPECT_THROW((void)model.accountant(), NoisyGdError);
  model.train(data);
  EXPECT_THROW((void)model.delete_records(rows_of(data, 0, 0)), AccountantError);  // deletes all 20
  EXPECT_EQ(model.accountant().current_n(), 20);  // the refusal changed nothing
  const LocalData more = synthetic_data(25, 62);
  EXPECT_THROW((void)model.delete_records(more), NoisyGdError);
  EXPECT_THROW(model.continue_training(rows_of(data, 0, 10), 5), NoisyGdError);
  LocalData bad_labels = rows_of(data, 0, 20);
  bad_labels.labels = bad_labels.labels.clone();
  bad_labels.labels[0] = kClasses;
  EXPECT_THROW(model.continue_training(bad_labels, 1), NoisyGdError);
  EXPECT_THROW(model.continue_training({data.features.to(torch::kFloat32), data.labels}, 1), NoisyGdError);
  NoisyGdConfig bad = small_config(1);
  bad.settings.params.eta = 5.0;
  EXPECT_THROW(NoisyGdModel(bad, *comm), AccountantError);
}

TEST(NoisyGdPersistence, SaveLoadRoundTripContinuesIdentically) {
  const std::filesystem::path root = lethe::storage::scratch::fresh_dir("noisy_gd", "persistence") / "store";
  const LocalData data = synthetic_data(60, 71);
  auto comm = single_rank();
  NoisyGdModel model(small_config(8), *comm);
  model.train(data);
  (void)model.delete_records(rows_of(data, 3, 60));

  lethe::storage::CheckpointStore store(root);
  const auto info = model.save(store, "softmax");
  EXPECT_EQ(info.version, 1);
  NoisyGdModel loaded = NoisyGdModel::load(store, "softmax", *comm);
  EXPECT_TRUE(torch::equal(loaded.weights(), model.weights()));
  EXPECT_EQ(loaded.accountant().history(), model.accountant().history());
  EXPECT_EQ(loaded.accountant().current_n(), 57);
  EXPECT_DOUBLE_EQ(loaded.accountant().delta(), 1.0 / 60);
  EXPECT_EQ(loaded.steps_taken(), model.steps_taken());

  const DeletionReceipt original = model.delete_records(rows_of(data, 5, 60));
  const DeletionReceipt reloaded = loaded.delete_records(rows_of(data, 5, 60));
  EXPECT_EQ(original.unlearning_steps, reloaded.unlearning_steps);
  EXPECT_TRUE(torch::equal(loaded.weights(), model.weights()));
  EXPECT_EQ(model.save(store, "softmax").version, 2);

  (void)store.write("other", {}, nlohmann::json{{"kind", "s3t"}});
  EXPECT_THROW((void)NoisyGdModel::load(store, "other", *comm), NoisyGdError);
  std::filesystem::remove_all(root);
}
