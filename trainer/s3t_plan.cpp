// trainer/s3t_plan.cpp — sequence selection, deletion bookkeeping, serving choice and the
// manifest form of a shard's S3T plan.
#include "trainer/s3t_plan.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "trainer/hungarian.h"

namespace lethe::trainer {
namespace {

std::string join(const std::vector<int>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ",";
    out += std::to_string(values[i]);
  }
  return out + "]";
}

// Empty when `order` is a permutation of 0..slices-1, else what is wrong with it.
std::string permutation_problem(const SliceOrder& order, int slices) {
  if (static_cast<int>(order.size()) != slices) {
    return join(order) + " has " + std::to_string(order.size()) + " entries, expected one per slice (" +
           std::to_string(slices) + ")";
  }
  std::vector<char> seen(static_cast<std::size_t>(slices), 0);
  for (int s : order) {
    if (s < 0 || s >= slices) {
      return join(order) + " names slice " + std::to_string(s) + ", outside 0.." + std::to_string(slices - 1);
    }
    if (seen[static_cast<std::size_t>(s)]) {
      return join(order) + " is not a permutation of the " + std::to_string(slices) + " slices 0.." +
             std::to_string(slices - 1) + ": slice " + std::to_string(s) + " appears twice";
    }
    seen[static_cast<std::size_t>(s)] = 1;
  }
  return {};
}

void require_order(const SliceOrder& order, int slices, const std::string& field) {
  if (const std::string problem = permutation_problem(order, slices); !problem.empty()) {
    throw std::invalid_argument(field + ": " + problem + "; each slice must appear exactly once");
  }
}

// Applies the recursive rotation scheme of cyclic_sequences to `list` in place.
void cyclic_permute(std::span<int> list, std::int64_t index) {
  const auto n = static_cast<std::int64_t>(list.size());
  if (n <= 1) return;
  std::rotate(list.begin(), list.begin() + static_cast<std::ptrdiff_t>(index % n), list.end());
  cyclic_permute(list.subspan(1), index / n);
}

double survival(double prefix_mass, int horizon) {
  // Clamped: rounding may push a mass that sums to 1 a hair above it.
  return std::pow(std::max(0.0, 1.0 - prefix_mass), horizon);
}

void require_sequence_index(const ShardPlan& plan, int sequence) {
  if (sequence < 0 || sequence >= static_cast<int>(plan.sequences.size())) {
    throw std::invalid_argument("sequence " + std::to_string(sequence) + " is outside the shard's " +
                                std::to_string(plan.sequences.size()) + " sequences (0.." +
                                std::to_string(static_cast<int>(plan.sequences.size()) - 1) + ")");
  }
}

}  // namespace

std::string_view to_string(SequenceSelection selection) {
  return selection == SequenceSelection::kCyclic ? "cyclic" : "bms";
}

SequenceSelection parse_sequence_selection(std::string_view name) {
  if (name == "cyclic") return SequenceSelection::kCyclic;
  if (name == "bms") return SequenceSelection::kBms;
  throw std::invalid_argument("sequence selection '" + std::string(name) + "' is unknown; use 'cyclic' or 'bms'");
}

std::int64_t max_cyclic_sequences(int slices) {
  if (slices < 1) return 0;
  std::int64_t count = 1;
  for (int n = 2; n <= slices; ++n) {
    if (count > std::numeric_limits<std::int64_t>::max() / n) return std::numeric_limits<std::int64_t>::max();
    count *= n;
  }
  return count;
}

std::vector<SliceOrder> cyclic_sequences(int slices, int budget) {
  if (slices < 1) {
    throw std::invalid_argument("slices L=" + std::to_string(slices) + " must be at least 1; raise `slices`");
  }
  if (budget < 1) {
    throw std::invalid_argument("budget B=" + std::to_string(budget) + " must be at least 1; raise `budget`");
  }
  const std::int64_t distinct = max_cyclic_sequences(slices);
  if (budget > distinct) {
    throw std::invalid_argument("budget B=" + std::to_string(budget) + " exceeds the " + std::to_string(distinct) +
                                " distinct cyclic sequences of L=" + std::to_string(slices) +
                                " slices; lower `budget`");
  }
  std::vector<SliceOrder> orders;
  orders.reserve(static_cast<std::size_t>(budget));
  for (int b = 0; b < budget; ++b) {
    SliceOrder order(static_cast<std::size_t>(slices));
    std::iota(order.begin(), order.end(), 0);
    cyclic_permute(order, b);
    orders.push_back(std::move(order));
  }
  return orders;
}

void validate_deletion_probabilities(std::span<const double> q, int slices) {
  if (static_cast<int>(q.size()) != slices) {
    throw std::invalid_argument("deletion_probabilities: " + std::to_string(q.size()) +
                                " entries given, expected one per slice (" + std::to_string(slices) + ")");
  }
  double sum = 0.0;
  for (std::size_t s = 0; s < q.size(); ++s) {
    if (!std::isfinite(q[s]) || q[s] < 0.0 || q[s] > 1.0) {
      throw std::invalid_argument("deletion_probabilities[" + std::to_string(s) + "] = " + std::to_string(q[s]) +
                                  " is not a probability; give a value in [0, 1]");
    }
    sum += q[s];
  }
  if (sum > 1.0 + 1e-9) {
    throw std::invalid_argument("deletion_probabilities sum to " + std::to_string(sum) +
                                ", more than 1; each is the chance that one deletion hits that slice, so scale "
                                "them to sum to at most 1");
  }
}

double expected_surviving_depth(const SliceOrder& order, std::span<const double> q, int horizon) {
  const int slices = static_cast<int>(order.size());
  require_order(order, slices, "order");
  validate_deletion_probabilities(q, slices);
  if (horizon < 0) {
    throw std::invalid_argument("horizon t=" + std::to_string(horizon) + " must be ≥ 0 deletions");
  }
  double mass = 0.0, depth = 0.0;
  for (int s : order) {
    mass += q[static_cast<std::size_t>(s)];
    depth += survival(mass, horizon);
  }
  return depth;
}

std::vector<SliceOrder> bms_sequences(std::span<const double> q, int budget, int horizon) {
  const int slices = static_cast<int>(q.size());
  if (slices < 1) {
    throw std::invalid_argument("deletion_probabilities is empty; BMS needs one probability per slice");
  }
  validate_deletion_probabilities(q, slices);
  if (budget < 1 || budget > slices) {
    throw std::invalid_argument("budget B=" + std::to_string(budget) + " is outside 1..L=" + std::to_string(slices) +
                                " for BMS, which builds at most one sequence per slice; lower `budget` or use "
                                "cyclic selection");
  }
  if (horizon < 1) {
    throw std::invalid_argument("bms horizon t=" + std::to_string(horizon) +
                                " must be at least 1 deletion; raise `horizon`");
  }
  // Rows budget..slices-1 are phantom sequences: they keep every position's matching feasible.
  const auto rows = static_cast<std::size_t>(slices);
  std::vector<SliceOrder> orders(rows);
  std::vector<double> prefix_mass(rows, 0.0);
  std::vector<std::vector<char>> used(rows, std::vector<char>(rows, 0));
  std::vector<std::vector<double>> weights(rows, std::vector<double>(rows, 0.0));
  for (int position = 0; position < slices; ++position) {
    for (std::size_t b = 0; b < rows; ++b) {
      for (std::size_t s = 0; s < rows; ++s) {
        if (used[b][s]) {
          weights[b][s] = kForbiddenWeight;
        } else {
          weights[b][s] = static_cast<int>(b) < budget ? survival(prefix_mass[b] + q[s], horizon) : 0.0;
        }
      }
    }
    const Assignment assignment = max_weight_assignment(weights);
    for (std::size_t b = 0; b < rows; ++b) {
      const int s = assignment.column_of_row[b];
      orders[b].push_back(s);
      used[b][static_cast<std::size_t>(s)] = 1;
      prefix_mass[b] += q[static_cast<std::size_t>(s)];
    }
  }
  orders.resize(static_cast<std::size_t>(budget));
  return orders;
}

std::vector<SliceOrder> select_sequences(SequenceSelection selection, int slices, int budget,
                                         std::span<const double> q, int horizon) {
  if (selection == SequenceSelection::kCyclic) return cyclic_sequences(slices, budget);
  if (static_cast<int>(q.size()) != slices) {
    throw std::invalid_argument("bms selection needs deletion_probabilities with one entry per slice (" +
                                std::to_string(slices) + "), got " + std::to_string(q.size()));
  }
  return bms_sequences(q, budget, horizon);
}

void validate_shard_plan(const ShardPlan& plan, std::string_view field) {
  const std::string base(field);
  if (plan.slices < 1) {
    throw std::invalid_argument(base + ".slices: " + std::to_string(plan.slices) + " must be at least 1");
  }
  if (plan.sequences.empty()) {
    throw std::invalid_argument(base + ".sequences: empty; a shard trains at least one sequence");
  }
  for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
    const std::string at = base + ".sequences[" + std::to_string(b) + "]";
    require_order(plan.sequences[b].order, plan.slices, at + ".order");
    const int prefix = plan.sequences[b].surviving_prefix;
    if (prefix < 0 || prefix > plan.slices) {
      throw std::invalid_argument(at + ".surviving_prefix: " + std::to_string(prefix) + " is outside 0.." +
                                  std::to_string(plan.slices));
    }
  }
}

ShardPlan make_shard_plan(int slices, std::vector<SliceOrder> orders, int surviving_prefix) {
  ShardPlan plan;
  plan.slices = slices;
  plan.sequences.reserve(orders.size());
  for (auto& order : orders) plan.sequences.push_back({std::move(order), surviving_prefix});
  validate_shard_plan(plan);
  return plan;
}

DeletionEffect apply_deletion(ShardPlan& plan, int slice) {
  if (slice < 0 || slice >= plan.slices) {
    throw std::invalid_argument("deleted record's slice " + std::to_string(slice) + " is outside the shard's " +
                                std::to_string(plan.slices) + " slices 0.." + std::to_string(plan.slices - 1));
  }
  DeletionEffect effect;
  effect.slice = slice;
  effect.shard_live_before = !is_dead(plan);
  effect.sequences.reserve(plan.sequences.size());
  for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
    SequenceState& state = plan.sequences[b];
    const auto where = std::find(state.order.begin(), state.order.end(), slice);
    SequenceTruncation truncation;
    truncation.sequence = static_cast<int>(b);
    truncation.slice_position = static_cast<int>(where - state.order.begin()) + 1;
    truncation.depth_before = state.surviving_prefix;
    truncation.depth_after = std::min(state.surviving_prefix, truncation.slice_position - 1);
    for (int step = truncation.slice_position; step <= plan.slices; ++step) {
      truncation.invalidated_steps.push_back(step);
    }
    state.surviving_prefix = truncation.depth_after;
    effect.sequences.push_back(std::move(truncation));
  }
  effect.shard_live_after = !is_dead(plan);
  return effect;
}

std::optional<ServingChoice> serving_choice(const ShardPlan& plan) {
  std::optional<ServingChoice> best;
  for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
    const int depth = plan.sequences[b].surviving_prefix;
    if (depth > 0 && (!best || depth > best->depth)) best = ServingChoice{static_cast<int>(b), depth};
  }
  return best;
}

bool is_dead(const ShardPlan& plan) {
  return std::none_of(plan.sequences.begin(), plan.sequences.end(),
                      [](const SequenceState& state) { return state.surviving_prefix > 0; });
}

std::vector<TrainingStep> retrain_plan(const ShardPlan& plan) {
  std::vector<TrainingStep> steps;
  for (std::size_t b = 0; b < plan.sequences.size(); ++b) {
    const SequenceState& state = plan.sequences[b];
    for (int step = state.surviving_prefix + 1; step <= plan.slices; ++step) {
      steps.push_back({static_cast<int>(b), step, SliceOrder(state.order.begin(), state.order.begin() + step)});
    }
  }
  return steps;
}

void record_trained_step(ShardPlan& plan, int sequence, int step) {
  require_sequence_index(plan, sequence);
  SequenceState& state = plan.sequences[static_cast<std::size_t>(sequence)];
  if (step != state.surviving_prefix + 1 || step > plan.slices) {
    throw std::invalid_argument("sequence " + std::to_string(sequence) + " has a surviving prefix of " +
                                std::to_string(state.surviving_prefix) + " of " + std::to_string(plan.slices) +
                                " steps, so step " + std::to_string(step) +
                                " cannot be recorded; train the steps in order from the surviving prefix");
  }
  state.surviving_prefix = step;
}

nlohmann::json shard_plan_to_json(const ShardPlan& plan) {
  nlohmann::json sequences = nlohmann::json::array();
  for (const SequenceState& state : plan.sequences) {
    sequences.push_back({{"order", state.order}, {"surviving_prefix", state.surviving_prefix}});
  }
  return {{"slices", plan.slices}, {"sequences", std::move(sequences)}};
}

namespace {

int json_int(const nlohmann::json& object, const char* key, const std::string& at) {
  const auto it = object.find(key);
  if (it == object.end()) throw std::invalid_argument(at + "." + key + ": missing; add it (an integer)");
  if (!it->is_number_integer()) {
    throw std::invalid_argument(at + "." + key + ": expected an integer, got " + it->dump());
  }
  const auto value = it->get<std::int64_t>();
  if (value < std::numeric_limits<int>::min() || value > std::numeric_limits<int>::max()) {
    throw std::invalid_argument(at + "." + key + ": " + it->dump() + " is out of range");
  }
  return static_cast<int>(value);
}

void reject_unknown_keys(const nlohmann::json& object, std::initializer_list<std::string_view> known,
                         const std::string& at) {
  for (const auto& item : object.items()) {
    if (std::find(known.begin(), known.end(), item.key()) == known.end()) {
      throw std::invalid_argument(at + "." + item.key() + ": unknown key; remove it");
    }
  }
}

}  // namespace

ShardPlan shard_plan_from_json(const nlohmann::json& json, std::string_view field) {
  const std::string base(field);
  if (!json.is_object()) throw std::invalid_argument(base + ": expected an object, got " + json.dump());
  reject_unknown_keys(json, {"slices", "sequences"}, base);
  ShardPlan plan;
  plan.slices = json_int(json, "slices", base);
  const auto sequences = json.find("sequences");
  if (sequences == json.end() || !sequences->is_array()) {
    throw std::invalid_argument(base + ".sequences: missing or not an array; give one object per sequence");
  }
  for (std::size_t b = 0; b < sequences->size(); ++b) {
    const nlohmann::json& entry = (*sequences)[b];
    const std::string at = base + ".sequences[" + std::to_string(b) + "]";
    if (!entry.is_object()) throw std::invalid_argument(at + ": expected an object, got " + entry.dump());
    reject_unknown_keys(entry, {"order", "surviving_prefix"}, at);
    SequenceState state;
    const auto order = entry.find("order");
    if (order == entry.end() || !order->is_array()) {
      throw std::invalid_argument(at + ".order: missing or not an array of slice indices");
    }
    for (std::size_t k = 0; k < order->size(); ++k) {
      const nlohmann::json& slice = (*order)[k];
      if (!slice.is_number_integer() || slice.get<std::int64_t>() < 0 ||
          slice.get<std::int64_t>() > std::numeric_limits<int>::max()) {
        throw std::invalid_argument(at + ".order[" + std::to_string(k) + "]: expected a slice index, got " +
                                    slice.dump());
      }
      state.order.push_back(slice.get<int>());
    }
    state.surviving_prefix = json_int(entry, "surviving_prefix", at);
    plan.sequences.push_back(std::move(state));
  }
  validate_shard_plan(plan, field);
  return plan;
}

void to_json(nlohmann::json& json, const ShardPlan& plan) { json = shard_plan_to_json(plan); }

void from_json(const nlohmann::json& json, ShardPlan& plan) { plan = shard_plan_from_json(json); }

}  // namespace lethe::trainer
