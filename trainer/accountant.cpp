#include "trainer/accountant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

namespace lethe::trainer {
namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

std::string num(double value) {
  std::ostringstream out;
  out.precision(10);
  out << value;
  return out.str();
}

[[noreturn]] void refuse(const std::string& what) { throw AccountantError("accountant: " + what); }

void require_finite(double value, const char* name) {
  if (!std::isfinite(value)) refuse(std::string(name) + " = " + num(value) + " is not a finite number");
}

void require_steps(std::int64_t steps, const char* name) {
  if (steps < 0) refuse(std::string(name) + " = " + std::to_string(steps) + " must be >= 0");
}

void validate_delta(double delta) {
  if (!(delta > 0.0 && delta < 1.0))
    refuse("delta = " + num(delta) + " must satisfy 0 < delta < 1 (the default is 1/n, which needs n >= 2)");
}

// log(c) for c = 1 - eta lambda, accurate when eta lambda is tiny.
double log_contraction(const NoisyGdParams& params) { return std::log1p(-params.eta * params.lambda); }

}  // namespace

void validate(const NoisyGdParams& p) {
  require_finite(p.lambda, "lambda");
  require_finite(p.eta, "eta");
  require_finite(p.sigma, "sigma");
  require_finite(p.clip, "clip");
  require_finite(p.beta, "beta");
  if (!(p.lambda > 0.0))
    refuse("lambda = " + num(p.lambda) + " must be > 0: the certificate needs a strongly convex objective");
  if (!(p.sigma > 0.0)) refuse("sigma = " + num(p.sigma) + " must be > 0: without noise nothing is certified");
  if (!(p.beta > 0.0)) refuse("beta = " + num(p.beta) + " must be > 0");
  if (!(p.clip > 0.0)) refuse("clip = " + num(p.clip) + " must be > 0 (use sqrt(2) = 1.41421356 or more)");
  const double eta_max = 1.0 / (p.beta + p.lambda);
  if (!(p.eta > 0.0) || p.eta > eta_max)
    refuse("eta = " + num(p.eta) + " must satisfy 0 < eta <= 1/(beta + lambda) = " + num(eta_max) +
           " (beta = " + num(p.beta) + ", lambda = " + num(p.lambda) + "): lower eta");
}

bool is_certified(const NoisyGdParams& params) { return params.clip >= kSoftmaxGradientBound; }

double gradient_bound(const NoisyGdParams& params) { return std::min(params.clip, kSoftmaxGradientBound); }

double contraction(const NoisyGdParams& params) { return 1.0 - params.eta * params.lambda; }

double step_noise_variance(const NoisyGdParams& params) { return 2.0 * params.eta * params.sigma * params.sigma; }

double distance_bound(const NoisyGdParams& params, const std::vector<Phase>& history) {
  validate(params);
  const double m = gradient_bound(params);
  double z = 0.0;
  for (std::size_t h = 0; h < history.size(); ++h) {
    const Phase& phase = history[h];
    if (phase.n < 1 || phase.steps < 0 || phase.deleted_since < 0 || phase.deleted_since >= phase.n)
      refuse("phase " + std::to_string(h) + " (n = " + std::to_string(phase.n) + ", steps = " +
             std::to_string(phase.steps) + ", deleted = " + std::to_string(phase.deleted_since) +
             ") needs n > deleted >= 0 and steps >= 0");
    const double g = 2.0 * static_cast<double>(phase.deleted_since) * m / static_cast<double>(phase.n);
    const double c_pow_k = std::exp(static_cast<double>(phase.steps) * log_contraction(params));
    const double one_minus_c_pow_k = -std::expm1(static_cast<double>(phase.steps) * log_contraction(params));
    z = c_pow_k * z + (g / params.lambda) * one_minus_c_pow_k;
  }
  return z;
}

double unlearning_rdp_slope(const NoisyGdParams& params, double z, std::int64_t steps) {
  validate(params);
  require_finite(z, "z");
  if (z < 0.0) refuse("z = " + num(z) + " must be >= 0");
  require_steps(steps, "unlearning steps");
  if (z == 0.0) return 0.0;
  if (steps == 0) return kInfinity;
  const double r = params.eta * params.lambda;
  const double two_k_log_c = 2.0 * static_cast<double>(steps) * log_contraction(params);
  const double c_pow_2k = std::exp(two_k_log_c);
  // sum_{j<k} c^{2j} = (1 - c^{2k}) / (1 - c^2) and 1 - c^2 = r (2 - r).
  const double sum_c2 = -std::expm1(two_k_log_c) / (r * (2.0 - r));
  return z * z * c_pow_2k / (2.0 * step_noise_variance(params) * sum_c2);
}

double dp_rdp_slope(const NoisyGdParams& params, std::int64_t n, std::int64_t steps) {
  validate(params);
  if (n < 1) refuse("n = " + std::to_string(n) + " must be >= 1");
  require_steps(steps, "training steps");
  if (steps == 0) return 0.0;
  const double r = params.eta * params.lambda;
  const double k_log_c = static_cast<double>(steps) * log_contraction(params);
  const double sum_c = -std::expm1(k_log_c) / r;                         // sum_{j<K} c^j
  const double sum_c2 = -std::expm1(2.0 * k_log_c) / (r * (2.0 - r));  // sum_{j<K} c^{2j}
  const double shift = params.eta * 2.0 * gradient_bound(params) / static_cast<double>(n);  // eta g_1
  return shift * shift * sum_c * sum_c / (2.0 * step_noise_variance(params) * sum_c2);
}

DpGuarantee rdp_to_dp(double rdp_slope, double delta) {
  validate_delta(delta);
  if (std::isnan(rdp_slope) || rdp_slope < 0.0) refuse("Renyi slope = " + num(rdp_slope) + " must be >= 0");
  const double log_inv_delta = -std::log(delta);
  if (rdp_slope == 0.0) return {0.0, delta, kInfinity};
  if (std::isinf(rdp_slope)) return {kInfinity, delta, kInfinity};
  // d/dalpha [alpha A + L/(alpha-1)] = A - L/(alpha-1)^2 = 0, a minimum since the function is convex.
  const double alpha = 1.0 + std::sqrt(log_inv_delta / rdp_slope);
  const double epsilon = rdp_slope + 2.0 * std::sqrt(rdp_slope * log_inv_delta);
  return {epsilon, delta, alpha};
}

std::int64_t unlearning_steps(const NoisyGdParams& params, double z, double target_epsilon, double delta) {
  require_finite(target_epsilon, "target epsilon");
  if (!(target_epsilon > 0.0)) refuse("target epsilon = " + num(target_epsilon) + " must be > 0");
  validate_delta(delta);
  const auto meets = [&](std::int64_t k) {
    return rdp_to_dp(unlearning_rdp_slope(params, z, k), delta).epsilon <= target_epsilon;
  };
  if (meets(0)) return 0;  // z = 0: nothing to forget
  // epsilon(k) decreases with k: double until the target is met, then bisect.
  constexpr std::int64_t kLimit = std::int64_t{1} << 62;
  std::int64_t failing = 0;
  std::int64_t passing = 1;
  while (!meets(passing)) {
    failing = passing;
    if (passing >= kLimit)
      refuse("no number of steps below 2^62 reaches target epsilon " + num(target_epsilon) +
             " from z = " + num(z) + ": raise the target, sigma or lambda");
    passing *= 2;
  }
  while (passing - failing > 1) {
    const std::int64_t mid = failing + (passing - failing) / 2;
    (meets(mid) ? passing : failing) = mid;
  }
  return passing;
}

Accountant::Accountant(NoisyGdParams params, std::int64_t n, std::optional<double> delta)
    : params_(params), n_(n), delta_(0.0) {
  validate(params_);
  if (n_ < 1) refuse("n = " + std::to_string(n_) + " must be >= 1");
  delta_ = delta.value_or(1.0 / static_cast<double>(n_));
  validate_delta(delta_);
}

Accountant::Accountant(NoisyGdParams params, std::int64_t n, std::vector<Phase> history, double delta)
    : Accountant(params, n, delta) {
  for (std::size_t h = 0; h < history.size(); ++h) {
    const Phase& phase = history[h];
    if (phase.steps < 0 || phase.deleted_since < 0 || phase.n - phase.deleted_since != n_)
      refuse("restored phase " + std::to_string(h) + " (n = " + std::to_string(phase.n) + ", steps = " +
             std::to_string(phase.steps) + ", deleted = " + std::to_string(phase.deleted_since) +
             ") is inconsistent with the current n = " + std::to_string(n_) +
             ": every phase needs n - deleted = current n; the saved history is corrupt");
  }
  history_ = std::move(history);
}

void Accountant::record_training(std::int64_t steps) {
  require_steps(steps, "training steps");
  if (steps > 0) history_.push_back(Phase{n_, steps, 0});
}

void Accountant::record_deletion(std::int64_t count) {
  if (count < 0 || count >= n_)
    refuse("deleting " + std::to_string(count) + " of n = " + std::to_string(n_) +
           " records: needs n > deleted >= 0 (a model needs at least one record left)");
  for (Phase& phase : history_) phase.deleted_since += count;
  n_ -= count;
}

void Accountant::reset_history() { history_.clear(); }

double Accountant::distance_bound() const { return trainer::distance_bound(params_, history_); }

std::int64_t Accountant::total_steps() const {
  std::int64_t total = 0;
  for (const Phase& phase : history_) total += phase.steps;
  return total;
}

DeletionPlan Accountant::plan_deletion(double target_epsilon) const {
  DeletionPlan plan;
  plan.z = distance_bound();
  plan.steps = unlearning_steps(params_, plan.z, target_epsilon, delta_);
  plan.unlearning = rdp_to_dp(unlearning_rdp_slope(params_, plan.z, plan.steps), delta_);
  plan.remaining_dp = remaining_dp(plan.steps);
  plan.certified = is_certified(params_);
  return plan;
}

DpGuarantee Accountant::remaining_dp(std::int64_t extra_steps) const {
  require_steps(extra_steps, "extra steps");
  return rdp_to_dp(dp_rdp_slope(params_, n_, total_steps() + extra_steps), delta_);
}

}  // namespace lethe::trainer
