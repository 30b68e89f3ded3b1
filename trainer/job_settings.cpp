#include "trainer/job_settings.h"

#include <cmath>
#include <cstdio>

#include "storage/hashing.h"
#include "trainer/json_fields.h"

namespace lethe::trainer {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json to_json(const OptimizerSettings& o) {
  return {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"learning_rate", o.learning_rate}};
}

// dropout and threads only when set: jobs from before they existed keep their config.json and digest.
json to_json(const PretrainSettings& p) {
  auto out = to_json(p.optimizer);
  if (p.dropout > 0) out["dropout"] = p.dropout;
  if (p.threads > 0) out["threads"] = p.threads;
  if (p.micro_batches > 1) out["micro_batches"] = p.micro_batches;
  return out;
}

std::string stored_path(const fs::path& path, const fs::path& base) {
  if (path.empty() || base.empty()) return path.string();
  return fs::absolute(path).lexically_normal().lexically_relative(fs::absolute(base).lexically_normal()).string();
}

fs::path loaded_path(const std::string& text, const fs::path& base) {
  if (text.empty()) return {};
  fs::path p(text);
  return (p.is_relative() && !base.empty() ? base / p : p).lexically_normal();
}

OptimizerSettings optimizer_from(const JsonFields& r) {
  return {r.get<int>("epochs"), r.get<std::int64_t>("batch_size"), r.get<double>("learning_rate")};
}

}  // namespace

void derive_settings(JobSettings& s) {
  s.model.sites = s.s3t.enabled ? s.s3t.slices : 1;
  auto& p = s.noisy_gd.params;
  // The largest step the analysis allows converges fastest.
  if (p.eta == 0 && std::isfinite(p.lambda) && p.lambda > 0) p.eta = 1.0 / (p.beta + p.lambda);
  if (s.s3t.selection == SequenceSelection::kBms && s.s3t.deletion_probabilities.empty() && s.s3t.slices > 0) {
    s.s3t.deletion_probabilities.assign(static_cast<std::size_t>(s.s3t.slices), 1.0 / s.s3t.slices);
  }
}

json to_json(const JobSettings& s, const fs::path& base) {
  const auto& n = s.noisy_gd;
  json out = {{"dataset", stored_path(s.dataset, base)},
              {"test_dataset", stored_path(s.test_dataset, base)},
              {"backbone", stored_path(s.backbone, base)},
              {"seed", s.seed},
              {"device", s.device},
              {"threads", s.threads},
              {"model", to_json(s.model)},
              {"training",
               {{"epochs", s.training.optimizer.epochs},
                {"batch_size", s.training.optimizer.batch_size},
                {"learning_rate", s.training.optimizer.learning_rate},
                {"cache_batch_size", s.training.cache_batch_size}}},
              {"pretrain", to_json(s.pretrain)},
              {"s3t",
               {{"shards", s.s3t.shards},
                {"slices", s.s3t.slices},
                {"sequences", s.s3t.sequences},
                {"selection", std::string(to_string(s.s3t.selection))},
                {"deletion_probabilities", s.s3t.deletion_probabilities},
                {"horizon", s.s3t.horizon},
                {"enabled", s.s3t.enabled}}},
              {"noisy_gd", n.enabled ? json{{"lambda", n.params.lambda},
                                            {"eta", n.params.eta},
                                            {"sigma", n.params.sigma},
                                            {"clip", n.params.clip},
                                            {"steps", n.train_steps},
                                            {"target_epsilon", n.target_epsilon},
                                            {"delta", n.delta ? json(*n.delta) : json()}}
                                     : json()},
              {"retrain", {{"live_shards_below", s.retrain.live_shards_below},
                           {"served_depth_below", s.retrain.served_depth_below}}}};
  // Only with a trunk: jobs without one keep their config.json (and digest). Its identity is the
  // SHA-256 in "model"; the path, like the backbone's, is where it lives.
  if (!s.trunk.empty()) out["trunk"] = stored_path(s.trunk, base);
  return out;
}

JobSettings job_settings_from_json(const json& j, const fs::path& base, const std::string& origin) {
  const JsonFields r(j, origin);
  JobSettings s;
  s.source = origin;
  s.dataset = loaded_path(r.get<std::string>("dataset"), base);
  s.test_dataset = loaded_path(r.get<std::string>("test_dataset"), base);
  s.backbone = loaded_path(r.get<std::string>("backbone"), base);
  if (r.has("trunk")) s.trunk = loaded_path(r.get<std::string>("trunk"), base);
  s.job_dir = base;
  s.seed = r.get<std::uint64_t>("seed");
  s.device = r.get<std::string>("device");
  s.threads = r.get<int>("threads");
  try {
    s.model = model_config_from_json(r.raw("model"));
  } catch (const std::exception& e) {
    r.fail("model", e.what());
  }
  const auto training = r.child("training");
  s.training.optimizer = optimizer_from(training);
  s.training.cache_batch_size = training.get<std::int64_t>("cache_batch_size");
  const auto pretrain = r.child("pretrain");
  s.pretrain.optimizer = optimizer_from(pretrain);
  if (pretrain.has("dropout")) s.pretrain.dropout = pretrain.get<double>("dropout");
  if (pretrain.has("threads")) s.pretrain.threads = pretrain.get<int>("threads");
  if (pretrain.has("micro_batches")) s.pretrain.micro_batches = pretrain.get<int>("micro_batches");
  const auto s3t = r.child("s3t");
  s.s3t.enabled = s3t.get<bool>("enabled");
  s.s3t.shards = s3t.get<int>("shards");
  s.s3t.slices = s3t.get<int>("slices");
  s.s3t.sequences = s3t.get<int>("sequences");
  try {
    s.s3t.selection = parse_sequence_selection(s3t.get<std::string>("selection"));
  } catch (const std::invalid_argument& e) {
    s3t.fail("selection", e.what());
  }
  s.s3t.deletion_probabilities = s3t.get<std::vector<double>>("deletion_probabilities");
  s.s3t.horizon = s3t.get<int>("horizon");
  if (r.has("retrain")) {
    const auto retrain = r.child("retrain");
    s.retrain = {retrain.get<int>("live_shards_below"), retrain.get<double>("served_depth_below")};
  }
  if (!r.raw("noisy_gd").is_null()) {
    const auto n = r.child("noisy_gd");
    s.noisy_gd.enabled = true;
    s.noisy_gd.params.lambda = n.get<double>("lambda");
    s.noisy_gd.params.eta = n.get<double>("eta");
    s.noisy_gd.params.sigma = n.get<double>("sigma");
    s.noisy_gd.params.clip = n.get<double>("clip");
    s.noisy_gd.train_steps = n.get<std::int64_t>("steps");
    s.noisy_gd.target_epsilon = n.get<double>("target_epsilon");
    if (!n.raw("delta").is_null()) s.noisy_gd.delta = n.get<double>("delta");
  }
  return s;
}

std::string config_digest(const JobSettings& settings) {
  auto json = to_json(settings);
  json.erase("dataset");
  json.erase("test_dataset");
  json.erase("backbone");
  json.erase("trunk");  // its SHA-256 is in "model"
  json.erase("retrain");  // when a retrain starts changes nothing it trains
  const auto text = json.dump();
  const auto hash = storage::siphash24(0x6c657468655f6366ULL, 0x6f6e6669675f3031ULL,
                                       {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return hex;
}

}  // namespace lethe::trainer
