// trainer/s3t_state.h — the S3T model's section of the job manifest (routes.s3t), typed and encoded
// here alone: per shard its plan (sequence orders and surviving prefixes) and, per sequence, the
// committed prefix checkpoints P_1..P_L (version and digest), and the shards awaiting a retrain.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/job_manifest.h"
#include "trainer/s3t_plan.h"

namespace lethe::storage {
class RecordAssigner;   // storage/record_assignment.h
class CheckpointStore;  // storage/checkpoint_store.h
}  // namespace lethe::storage

namespace lethe::trainer {

inline constexpr const char* kS3TRouteName = "s3t";

struct PrefixCheckpoint {
  int prefix = 0;   // i of P_i
  int version = 0;  // in the sequence's checkpoint series
  std::string digest;
  bool operator==(const PrefixCheckpoint&) const = default;
};

struct S3TSeries {
  int sequence = 0;
  std::string name;  // checkpoint series: series_name(shard, sequence), or a retrain's (is_series_of)
  std::vector<PrefixCheckpoint> prefixes;  // ascending by prefix
  [[nodiscard]] const PrefixCheckpoint* find(int prefix) const;
  bool operator==(const S3TSeries&) const = default;
};

struct S3TShard {
  int shard = 0;
  ShardPlan plan;
  std::vector<S3TSeries> series;  // one per sequence, in plan order
};

struct S3TSection {
  std::vector<S3TShard> shards;
  std::vector<int> retrain_pending;  // dead shards, in the order they died
};

// The checkpoint series of one (shard, sequence): "shard<k>-seq<b>".
[[nodiscard]] std::string series_name(int shard, int sequence);
// Whether `name` is a series of (shard, sequence): series_name's, or a retrain's (its name + "-r<id>").
[[nodiscard]] bool is_series_of(const std::string& name, int shard, int sequence);

// What deleting records did to a section (truncate_section): per touched shard the receipt's
// effect, and the checkpoint versions that carry a deleted record.
struct Truncation {
  nlohmann::json shards = nlohmann::json::array();
  std::vector<PurgeTarget> purge;
};
// Cuts every sequence of each record's shard before the record's slice (DESIGN.md §3), drops the
// invalidated prefixes from the section and lists every version at or above a cut in `store` for
// purging (also versions a crash left out of the section); dead shards join retrain_pending.
[[nodiscard]] Truncation truncate_section(S3TSection& section, const std::vector<std::string>& ids,
                                          const storage::RecordAssigner& assigner, const storage::CheckpointStore& store);

[[nodiscard]] nlohmann::json encode_s3t_section(const S3TSection& section);
// TrainerError (kDamaged) naming `origin` and the field when the section is malformed or its plans
// are inconsistent.
[[nodiscard]] S3TSection decode_s3t_section(const nlohmann::json& json, const std::string& origin);

}  // namespace lethe::trainer
