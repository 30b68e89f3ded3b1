// trainer/s3t_serving.h — what an S3T job serves right now: per live shard the prefix checkpoint of
// the sequence with the longest surviving prefix (DESIGN.md §3), from the manifest's plan state.
#pragma once

#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/ensemble.h"

namespace lethe::trainer {

// `shards` is [{"shard", "sequence" (null when dead), "depth"}].
struct S3TServing {
  std::vector<EnsembleMember> members;
  nlohmann::json shards;
};
// Loads the served prefix checkpoints; StorageError when the plan names a prefix no checkpoint holds.
// A manifest without S3T shards gives no members.
[[nodiscard]] S3TServing load_s3t_serving(const std::filesystem::path& job_dir, const nlohmann::json& manifest);

}  // namespace lethe::trainer
