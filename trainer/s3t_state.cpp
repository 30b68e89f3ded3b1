#include "trainer/s3t_state.h"

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
      if (s.sequence != static_cast<int>(b) || s.name != series_name(out.shard, s.sequence))
        series.fail("name", "expected sequence " + std::to_string(b) + " named " + series_name(out.shard, static_cast<int>(b)));
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
