// trainer/accountant.h — the privacy accountant of noisy-GD training with certified deletion
// (DESIGN.md §4): phase history, distance bound z, unlearning certificate, K_U and DP epsilon.
#pragma once

#include <cstdint>
#include <numbers>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lethe::trainer {

// A parameter outside the assumptions of the analysis; the message names it and the bound.
class AccountantError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Per-example cross-entropy gradient norm bound of softmax regression on features with
// ||phi(x)|| <= 1: ||phi|| * ||p - e_y|| <= sqrt(2). A clip at or above it changes nothing.
inline constexpr double kSoftmaxGradientBound = std::numbers::sqrt2;
// Smoothness of that loss: the softmax Hessian diag(p) - pp^T has eigenvalues <= 1/2.
inline constexpr double kSoftmaxSmoothness = 0.5;

// The hyper-parameters the certificate depends on.
struct NoisyGdParams {
  double lambda = 0.0;                  // L2 regularization, strong convexity
  double eta = 0.0;                     // step size, needs eta <= 1 / (beta + lambda)
  double sigma = 0.0;                   // noise scale: each step adds sqrt(2 eta sigma^2) N(0, I)
  double clip = kSoftmaxGradientBound;  // per-example gradient clip
  double beta = kSoftmaxSmoothness;     // smoothness of the per-example loss
};

// Throws AccountantError unless lambda > 0, sigma > 0, 0 < eta <= 1/(beta+lambda), clip > 0.
void validate(const NoisyGdParams& params);

// The clip < sqrt(2) truncates gradients, breaking the convexity the analysis needs.
[[nodiscard]] bool is_certified(const NoisyGdParams& params);
// M of DESIGN.md §4: the gradient norm bound actually in force, min(clip, sqrt 2).
[[nodiscard]] double gradient_bound(const NoisyGdParams& params);
// c = 1 - eta lambda, the contraction of one gradient step.
[[nodiscard]] double contraction(const NoisyGdParams& params);
// s^2 = 2 eta sigma^2, the variance of the noise added per step and coordinate.
[[nodiscard]] double step_noise_variance(const NoisyGdParams& params);

// One training phase: `steps` noisy GD steps on a dataset of `n` records, `deleted_since`
// of which have been deleted after the phase.
struct Phase {
  std::int64_t n = 0;
  std::int64_t steps = 0;
  std::int64_t deleted_since = 0;
  friend bool operator==(const Phase&, const Phase&) = default;
};

// z: bound on the distance between the model and the model trained only on the current data
// with the same initialization and noise (z <- c^K z + (g/lambda)(1 - c^K), g = 2 S M / n).
[[nodiscard]] double distance_bound(const NoisyGdParams& params, const std::vector<Phase>& history);

// A such that the unlearning certificate after k steps is eps_alpha = alpha * A:
// A = z^2 c^{2k} / (2 s^2 sum_{j<k} c^{2j}). Infinite at k = 0 unless z = 0 (then 0).
[[nodiscard]] double unlearning_rdp_slope(const NoisyGdParams& params, double z, std::int64_t steps);

// A such that the Renyi DP of K training steps on n records (replace-one, g_1 = 2M/n) is
// alpha * A = alpha (eta g_1)^2 (sum_{j<K} c^j)^2 / (2 s^2 sum_{j<K} c^{2j}); 0 at K = 0.
[[nodiscard]] double dp_rdp_slope(const NoisyGdParams& params, std::int64_t n, std::int64_t steps);

// (epsilon, delta) from a Renyi curve eps_alpha = alpha * A:
// epsilon = min_{alpha>1} [alpha A + log(1/delta)/(alpha-1)] = A + 2 sqrt(A log(1/delta)),
// reached at alpha = 1 + sqrt(log(1/delta)/A). At A = 0 the infimum 0 is approached as
// alpha -> infinity: alpha is +inf. At A = +inf, epsilon and alpha are +inf.
struct DpGuarantee {
  double epsilon = 0.0;
  double delta = 0.0;
  double alpha = 0.0;
};
[[nodiscard]] DpGuarantee rdp_to_dp(double rdp_slope, double delta);

// The smallest k >= 0 with rdp_to_dp(unlearning_rdp_slope(z, k), delta).epsilon <= target.
// 0 when z = 0. Throws AccountantError if no k below 2^62 meets the target.
[[nodiscard]] std::int64_t unlearning_steps(const NoisyGdParams& params, double z,
                                            double target_epsilon, double delta);

// Retraining from scratch costs `retrain_steps`; noisy deletion is worth it only if cheaper.
[[nodiscard]] inline bool retrain_is_cheaper(std::int64_t unlearning_steps, std::int64_t retrain_steps) {
  return unlearning_steps > retrain_steps;
}

// What a planned deletion needs: K_U, its (epsilon, delta, alpha), the bound z it starts
// from, the privacy of the remaining records after those K_U steps, and the certified flag.
struct DeletionPlan {
  std::int64_t steps = 0;  // K_U
  DpGuarantee unlearning;
  double z = 0.0;
  DpGuarantee remaining_dp;  // over all phases so far plus the K_U steps
  bool certified = true;
};

// The phase history of one model and the certificates derived from it. Datasets only
// shrink (deletions), so every deleted record was in every earlier phase's dataset.
class Accountant {
 public:
  // A model about to be trained on `n` records; delta defaults to 1/n (the first dataset).
  Accountant(NoisyGdParams params, std::int64_t n, std::optional<double> delta = std::nullopt);
  // Restores a saved history; `n` is the current dataset size.
  Accountant(NoisyGdParams params, std::int64_t n, std::vector<Phase> history, double delta);

  // `steps` noisy GD steps ran on the current dataset.
  void record_training(std::int64_t steps);
  // `count` records left the current dataset (0 <= count < n). Resets nothing else.
  void record_deletion(std::int64_t count);
  // Forgets the history: the model is retrained from its initialization on the current data.
  void reset_history();

  [[nodiscard]] double distance_bound() const;
  // K_U for `target_epsilon` from the current state, and the guarantees it gives.
  [[nodiscard]] DeletionPlan plan_deletion(double target_epsilon) const;
  // The (epsilon, delta) DP of the current records over all steps so far (+ extra_steps),
  // with g_1 = 2M/n at the current (smallest) n: conservative for the larger earlier datasets.
  [[nodiscard]] DpGuarantee remaining_dp(std::int64_t extra_steps = 0) const;

  [[nodiscard]] const NoisyGdParams& params() const { return params_; }
  [[nodiscard]] std::int64_t current_n() const { return n_; }
  [[nodiscard]] double delta() const { return delta_; }
  [[nodiscard]] const std::vector<Phase>& history() const { return history_; }
  [[nodiscard]] std::int64_t total_steps() const;

 private:
  NoisyGdParams params_;
  std::int64_t n_;
  double delta_;
  std::vector<Phase> history_;
};

}  // namespace lethe::trainer
