// trainer/s3t_plan.h — the pure planning side of S3T (DESIGN.md §3): which slice orders a shard
// trains (cyclic or BMS), how deletions truncate them, which sequence serves, what to retrain.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace lethe::trainer {

enum class SequenceSelection { kCyclic, kBms };

[[nodiscard]] std::string_view to_string(SequenceSelection selection);
// Parses "cyclic" or "bms"; throws std::invalid_argument naming the accepted values.
[[nodiscard]] SequenceSelection parse_sequence_selection(std::string_view name);

// A sequence π: order[k] is the slice (0..L-1) trained at step k+1; a permutation of 0..L-1.
using SliceOrder = std::vector<int>;

// How many distinct cyclic sequences L slices admit (L!, saturated at INT64_MAX).
[[nodiscard]] std::int64_t max_cyclic_sequences(int slices);

// The first `budget` cyclic sequences of `slices` slices. Sequence b (0-based) is defined
// recursively on a list of n elements: r = b mod n, rest = b / n; take rotation r of the list
// (its element r first, then r+1, …, wrapping), keep that first element and apply the same rule
// with index `rest` to its suffix. So b < L gives the L rotations (a Latin square), b in
// [L, 2L) the rotations with their suffix rotated once, and so on; every index below L! gives
// a distinct permutation, and every block of L consecutive indices is a Latin square.
// Throws std::invalid_argument when slices < 1, budget < 1 or budget > L!.
[[nodiscard]] std::vector<SliceOrder> cyclic_sequences(int slices, int budget);

// Expected surviving depth Σ_{k=1..L} (1 − Σ_{j≤k} q_π(j))^t of one sequence under t
// deletions drawn with per-slice probabilities q (one entry per slice).
[[nodiscard]] double expected_surviving_depth(const SliceOrder& order, std::span<const double> deletion_probabilities,
                                              int horizon);

// Checks per-slice deletion probabilities: one per slice, each finite in [0, 1], sum ≤ 1.
// Throws std::invalid_argument naming the offending entry (field `deletion_probabilities`).
void validate_deletion_probabilities(std::span<const double> deletion_probabilities, int slices);

// BMS: `budget` ≤ L sequences built position by position. At position k every sequence b, whose
// prefix so far has deletion mass Q_b = Σ_{j<k} q_π_b(j), is given a slice s it has not used,
// by a maximum-weight matching with weight w(b, s) = (1 − Q_b − q_s)^t: the k-th term of
// E[depth(π_b)], the probability that none of t deletions hits the extended prefix (slices the
// sequence already holds are forbidden). Distinct sequences get distinct slices at the same
// position; for budget < L, L − budget phantom sequences with zero weight fill the square so
// that each position's matching always exists (any Latin rectangle extends). Likely-deleted
// slices thus go late. Throws std::invalid_argument for bad q, horizon < 1 or budget > L.
[[nodiscard]] std::vector<SliceOrder> bms_sequences(std::span<const double> deletion_probabilities, int budget,
                                                    int horizon);

// Dispatches to cyclic_sequences or bms_sequences (q and horizon are only read for BMS).
[[nodiscard]] std::vector<SliceOrder> select_sequences(SequenceSelection selection, int slices, int budget,
                                                       std::span<const double> deletion_probabilities = {},
                                                       int horizon = 1);

// One sequence's state: its order and how many of its prefix checkpoints P_1..P_L are valid.
struct SequenceState {
  SliceOrder order;
  int surviving_prefix = 0;  // 0..L; P_1..P_{surviving_prefix} carry no deleted record
};

// One shard's sequences (the B of the budget), all over the same L slices.
struct ShardPlan {
  int slices = 0;
  std::vector<SequenceState> sequences;
};

// A plan whose sequences all start at `surviving_prefix` (0 before training, L once trained).
// Throws std::invalid_argument if an order is not a permutation of 0..L-1 or the prefix is out
// of range.
[[nodiscard]] ShardPlan make_shard_plan(int slices, std::vector<SliceOrder> orders, int surviving_prefix);

// Throws std::invalid_argument naming the field (e.g. "plan.sequences[2].order") when a plan is
// inconsistent: slices < 1, no sequences, an order that is not a permutation, a prefix out of range.
void validate_shard_plan(const ShardPlan& plan, std::string_view field = "plan");

// What one deletion did to one sequence.
struct SequenceTruncation {
  int sequence = 0;       // index in ShardPlan::sequences
  int slice_position = 0;  // p: 1-based position of the deleted record's slice in the order
  int depth_before = 0;
  int depth_after = 0;  // min(depth_before, p − 1)
  // Steps p..L: the prefix checkpoints P_p..P_L of this sequence carry the record's influence
  // and must be purged (those beyond depth_before may already be gone; purging is idempotent).
  std::vector<int> invalidated_steps;
};

// What deleting a record of one slice did to a shard.
struct DeletionEffect {
  int slice = 0;
  std::vector<SequenceTruncation> sequences;  // one per sequence, in plan order
  bool shard_live_before = false;
  bool shard_live_after = false;
};

// Applies the deletion of a record in `slice` to every sequence of the shard (DESIGN.md §3).
// Throws std::invalid_argument if the slice is out of range.
[[nodiscard]] DeletionEffect apply_deletion(ShardPlan& plan, int slice);

// The sequence a shard serves and the depth it serves at.
struct ServingChoice {
  int sequence = 0;
  int depth = 0;  // ≥ 1
};

// The sequence with the longest surviving prefix (ties: lowest index); nullopt if the shard is
// dead (no sequence has a surviving prefix).
[[nodiscard]] std::optional<ServingChoice> serving_choice(const ShardPlan& plan);
[[nodiscard]] bool is_dead(const ShardPlan& plan);

// One step to (re)train: step i trains site i and the head on the union of slices order[0..i-1],
// starting from the sequence's prefix checkpoint P_{i-1} (none for i = 1).
struct TrainingStep {
  int sequence = 0;
  int step = 0;  // 1-based
  std::vector<int> slices;  // π(1..step)
};

// Every step that must be (re)trained to restore each truncated sequence to full depth: for
// each sequence with surviving_prefix < L, steps surviving_prefix+1 .. L in order.
[[nodiscard]] std::vector<TrainingStep> retrain_plan(const ShardPlan& plan);

// Records that `step` of `sequence` was trained and its prefix checkpoint committed. Steps must
// follow on: step == surviving_prefix + 1, else std::invalid_argument.
void record_trained_step(ShardPlan& plan, int sequence, int step);

// JSON form stored in the job manifest:
//   {"slices": L, "sequences": [{"order": [..], "surviving_prefix": n}, ...]}
[[nodiscard]] nlohmann::json shard_plan_to_json(const ShardPlan& plan);
// Parses and validates; errors name the field under `field` (e.g. "shards[3].sequences[1].order").
[[nodiscard]] ShardPlan shard_plan_from_json(const nlohmann::json& json, std::string_view field = "plan");

void to_json(nlohmann::json& json, const ShardPlan& plan);
void from_json(const nlohmann::json& json, ShardPlan& plan);

}  // namespace lethe::trainer
