#include "trainer/s3t_state.h"

#include <algorithm>
#include <map>

#include "storage/checkpoint_store.h"
#include "storage/record_assignment.h"
#include "trainer/json_fields.h"

namespace lethe::trainer {

using nlohmann::json;

const PrefixCheckpoint* S3TSeries::find(int prefix) const {
  for (const auto& p : prefixes) {
    if (p.prefix == prefix) return &p;
  }
  return nullptr;
}

std::string series_name(int shard, int sequence) {
  return "shard" + std::to_string(shard) + "-seq" + std::to_string(sequence);
}

bool is_series_of(const std::string& name, int shard, int sequence) {
  const auto base = series_name(shard, sequence);
  if (name == base) return true;
  // A retrain's series (trainer/s3t_retrain.h): base + "-r" + the retrain's hex id.
  if (name.size() <= base.size() + 2 || name.compare(0, base.size() + 2, base + "-r") != 0) return false;
  return name.find_first_not_of("0123456789abcdef", base.size() + 2) == std::string::npos;
}

Truncation truncate_section(S3TSection& section, const std::vector<std::string>& ids,
                            const storage::RecordAssigner& assigner, const storage::CheckpointStore& store) {
  Truncation out;
  if (ids.empty() || section.shards.empty()) return out;
  const int shards = static_cast<int>(section.shards.size());
  const int slices = section.shards.front().plan.slices;
  std::vector<int> depth_before(section.shards.size(), 0);
  std::map<int, std::vector<int>> sequence_depth_before;
  for (const auto& shard : section.shards) {
    const auto choice = serving_choice(shard.plan);
    depth_before[static_cast<std::size_t>(shard.shard)] = choice ? choice->depth : 0;
  }
  std::map<int, std::map<int, int>> cut;  // shard -> sequence -> smallest invalidated step
  for (const auto& id : ids) {
    const auto a = assigner.assign(id, shards, slices);
    auto& plan = section.shards.at(static_cast<std::size_t>(a.shard)).plan;
    if (sequence_depth_before.count(a.shard) == 0) {
      for (const auto& sequence : plan.sequences) sequence_depth_before[a.shard].push_back(sequence.surviving_prefix);
    }
    for (const auto& truncation : apply_deletion(plan, a.slice).sequences) {
      auto& step = cut[a.shard][truncation.sequence];
      step = step == 0 ? truncation.slice_position : std::min(step, truncation.slice_position);
    }
  }
  for (const auto& [k, sequences] : cut) {
    auto& shard = section.shards[static_cast<std::size_t>(k)];
    json effects = json::array();
    for (const auto& [b, first_invalid] : sequences) {
      auto& series = shard.series[static_cast<std::size_t>(b)];
      json purged = json::array();
      for (const auto& info : store.versions(series.name)) {
        if (info.metadata.value("prefix", 0) >= first_invalid) {
          out.purge.push_back({series.name, info.version});
          purged.push_back(series.name + "/v" + std::to_string(info.version));
        }
      }
      std::erase_if(series.prefixes, [&](const PrefixCheckpoint& p) { return p.prefix >= first_invalid; });
      effects.push_back({{"sequence", b},
                         {"depth_before", sequence_depth_before[k][static_cast<std::size_t>(b)]},
                         {"depth_after", shard.plan.sequences[static_cast<std::size_t>(b)].surviving_prefix},
                         {"checkpoints_purged", purged}});
    }
    const auto choice = serving_choice(shard.plan);
    const bool dead = !choice;
    auto& pending = section.retrain_pending;
    if (dead && std::find(pending.begin(), pending.end(), k) == pending.end()) pending.push_back(k);
    out.shards.push_back({{"shard", k},
                          {"sequences", effects},
                          {"served_depth_before", depth_before[static_cast<std::size_t>(k)]},
                          {"served_depth_after", choice ? choice->depth : 0},
                          {"served_sequence", choice ? json(choice->sequence) : json(nullptr)},
                          {"live", !dead},
                          {"full_retrain_scheduled", dead}});
  }
  return out;
}

json encode_s3t_section(const S3TSection& section) {
  json shards = json::array();
  for (const auto& shard : section.shards) {
    json series = json::array();
    for (const auto& s : shard.series) {
      json prefixes = json::array();
      for (const auto& p : s.prefixes) prefixes.push_back({{"prefix", p.prefix}, {"version", p.version}, {"digest", p.digest}});
      series.push_back({{"sequence", s.sequence}, {"name", s.name}, {"prefixes", prefixes}});
    }
    shards.push_back({{"shard", shard.shard}, {"plan", shard_plan_to_json(shard.plan)}, {"series", series}});
  }
  return {{"shards", shards}, {"retrain_pending", section.retrain_pending}};
}

S3TSection decode_s3t_section(const json& j, const std::string& origin) {
  const JsonFields f(j, origin, "routes.s3t.");
  S3TSection section;
  for (std::size_t k = 0; k < f.size_of("shards"); ++k) {
    const auto shard = f.element("shards", k);
    S3TShard out;
    out.shard = shard.get<int>("shard");
    if (out.shard != static_cast<int>(k)) shard.fail("shard", "expected " + std::to_string(k) + " (shards are listed in order)");
    try {
      out.plan = shard_plan_from_json(shard.raw("plan"), shard.where("plan"));
    } catch (const std::invalid_argument& e) {
      shard.fail("plan", e.what());
    }
    if (shard.size_of("series") != out.plan.sequences.size()) shard.fail("series", "expected one entry per sequence of the plan");
    for (std::size_t b = 0; b < shard.size_of("series"); ++b) {
      const auto series = shard.element("series", b);
      S3TSeries s{series.get<int>("sequence"), series.get<std::string>("name"), {}};
      if (s.sequence != static_cast<int>(b) || !is_series_of(s.name, out.shard, s.sequence))
        series.fail("name", "expected sequence " + std::to_string(b) + " named " + series_name(out.shard, static_cast<int>(b)) +
                                " or " + series_name(out.shard, static_cast<int>(b)) + "-r<retrain id>");
      for (std::size_t i = 0; i < series.size_of("prefixes"); ++i) {
        const auto p = series.element("prefixes", i);
        s.prefixes.push_back({p.get<int>("prefix"), p.get<int>("version"), p.get<std::string>("digest")});
      }
      out.series.push_back(std::move(s));
    }
    section.shards.push_back(std::move(out));
  }
  section.retrain_pending = f.get<std::vector<int>>("retrain_pending");
  for (const int k : section.retrain_pending) {
    if (k < 0 || k >= static_cast<int>(section.shards.size()))
      f.fail("retrain_pending", std::to_string(k) + " is not a shard id (0.." + std::to_string(section.shards.size()) + "-1)");
  }
  return section;
}

}  // namespace lethe::trainer
