#include "launch/job_config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "storage/ledger.h"
#include "trainer/accountant.h"

namespace lethe::launch {

namespace {

// Walks one YAML mapping: typed reads that name the key in errors, and a final check for keys
// nobody read (typos such as "epoch" instead of "epochs" must not be silently ignored).
class Section {
 public:
  Section(const YAML::Node& node, std::string prefix, const std::filesystem::path& origin)
      : node_(node), prefix_(std::move(prefix)), origin_(origin) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(prefix_.empty() ? "(document)" : prefix_.substr(0, prefix_.size() - 1), "must be a mapping of keys to values");
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw ConfigError(origin_.string() + ": " + key + ": " + what);
  }

  [[nodiscard]] std::string key(const std::string& name) const { return prefix_ + name; }

  template <typename T>
  bool read(const std::string& name, T& out, const char* type_name) {
    seen_.insert(name);
    if (!node_ || node_.IsNull() || !node_[name]) return false;
    const auto value = node_[name];
    if (!value.IsScalar()) fail(key(name), std::string("expected ") + type_name);
    try {
      out = value.as<T>();
    } catch (const YAML::Exception&) {
      fail(key(name), std::string("expected ") + type_name + ", got '" + value.Scalar() + "'");
    }
    return true;
  }

  template <typename T>
  bool read_list(const std::string& name, std::vector<T>& out, const char* type_name) {
    seen_.insert(name);
    if (!node_ || node_.IsNull() || !node_[name]) return false;
    const auto value = node_[name];
    if (!value.IsSequence()) fail(key(name), std::string("expected a list of ") + type_name);
    out.clear();
    for (std::size_t i = 0; i < value.size(); ++i) {
      try {
        out.push_back(value[i].as<T>());
      } catch (const YAML::Exception&) {
        fail(key(name) + "[" + std::to_string(i) + "]", std::string("expected ") + type_name);
      }
    }
    return true;
  }

  [[nodiscard]] Section child(const std::string& name) {
    seen_.insert(name);
    return Section(node_ && node_.IsMap() ? node_[name] : YAML::Node(), prefix_ + name + ".", origin_);
  }

  void reject_unknown_keys() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& item : node_) {
      const auto name = item.first.as<std::string>();
      if (!seen_.count(name)) {
        std::string known;
        for (const auto& k : seen_) known += (known.empty() ? "" : ", ") + k;
        fail(key(name), "unknown key; known keys here: " + known);
      }
    }
  }

 private:
  YAML::Node node_;
  std::string prefix_;
  std::filesystem::path origin_;
  std::set<std::string> seen_;
};

std::filesystem::path resolve(const std::filesystem::path& origin, const std::string& value) {
  std::filesystem::path p(value);
  if (p.is_relative()) p = origin.parent_path() / p;
  return p.lexically_normal();
}

// epochs, batch_size and learning_rate: read and checked alike in `training` and `pretrain`.
void read_optimizer_keys(Section& section, trainer::OptimizerSettings& settings) {
  section.read("epochs", settings.epochs, "an integer");
  section.read("batch_size", settings.batch_size, "an integer");
  section.read("learning_rate", settings.learning_rate, "a number");
  if (settings.epochs < 1) section.fail(section.key("epochs"), "must be at least 1");
  if (settings.batch_size < 1) section.fail(section.key("batch_size"), "must be at least 1");
  if (!(settings.learning_rate > 0) || !std::isfinite(settings.learning_rate))
    section.fail(section.key("learning_rate"), "must be a positive number");
}

// The noisy_gd section, checked against the accountant's assumptions (trainer/accountant.h) so a
// config that could not certify a deletion fails here, naming its key, not in the middle of a run.
// Returns whether eta was given.
bool read_noisy_gd(Section& section, trainer::NoisyGdSettings& settings) {
  section.read("enabled", settings.enabled, "true or false");
  section.read("lambda", settings.params.lambda, "a number");
  const bool eta_given = section.read("eta", settings.params.eta, "a number");
  section.read("sigma", settings.params.sigma, "a number");
  section.read("clip", settings.params.clip, "a number");
  section.read("steps", settings.train_steps, "an integer");
  section.read("target_epsilon", settings.target_epsilon, "a number");
  double delta = 0;
  if (section.read("delta", delta, "a number")) settings.delta = delta;
  section.reject_unknown_keys();
  return eta_given;
}

// The noisy_gd section's values against the accountant's assumptions (after derive_settings has
// filled in the default step size).
void check_noisy_gd(Section& section, const trainer::NoisyGdSettings& settings) {
  try {
    trainer::validate(settings.params);
  } catch (const trainer::AccountantError& e) {
    // "accountant: eta = 3 must satisfy ...": the parameter's name is the key.
    std::string what = e.what();
    const std::string prefix = "accountant: ";
    if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
    section.fail(section.key(what.substr(0, what.find(' '))), what);
  }
  if (settings.train_steps < 1) section.fail(section.key("steps"), "must be at least 1");
  if (!(settings.target_epsilon > 0) || !std::isfinite(settings.target_epsilon))
    section.fail(section.key("target_epsilon"), "must be a positive number (the epsilon each deletion certifies)");
  if (settings.delta && !(*settings.delta > 0 && *settings.delta < 1))
    section.fail(section.key("delta"), "must lie strictly between 0 and 1 (leave it out for 1/n)");
}

}  // namespace

JobConfig parse_job_config(const std::string& yaml_text, const std::filesystem::path& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(origin.string() + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw ConfigError(origin.string() + ": the job config must be a YAML mapping (key: value)");
  JobConfig c;
  c.source = origin;
  Section top(root, "", origin);
  std::string text;
  if (!top.read("dataset", text, "a path")) top.fail("dataset", "missing: name the training dataset file (from `lethe ingest`)");
  c.dataset = resolve(origin, text);
  if (top.read("test_dataset", text, "a path")) c.test_dataset = resolve(origin, text);
  if (!top.read("backbone", text, "a path")) top.fail("backbone", "missing: name the backbone weights file (`lethe pretrain` writes it)");
  c.backbone = resolve(origin, text);
  if (top.read("job_dir", text, "a path")) c.job_dir = resolve(origin, text);
  top.read("seed", c.seed, "a non-negative integer");
  top.read("device", c.device, "a string");
  if (c.device != "cpu" && c.device != "cuda") top.fail("device", "'" + c.device + "' is not a device; use cpu or cuda");
  top.read("threads", c.threads, "an integer");
  if (c.threads < 1) top.fail("threads", "must be at least 1");

  auto s3t = top.child("s3t");
  s3t.read("enabled", c.s3t.enabled, "true or false");
  s3t.read("shards", c.s3t.shards, "an integer");
  s3t.read("slices", c.s3t.slices, "an integer");
  s3t.read("sequences", c.s3t.sequences, "an integer");
  if (c.s3t.shards < 1) s3t.fail(s3t.key("shards"), "must be at least 1");
  if (c.s3t.slices < 1) s3t.fail(s3t.key("slices"), "must be at least 1");
  if (c.s3t.sequences < 1) s3t.fail(s3t.key("sequences"), "must be at least 1");
  if (s3t.read("selection", text, "cyclic or bms")) {
    try {
      c.s3t.selection = trainer::parse_sequence_selection(text);
    } catch (const std::invalid_argument& e) {
      s3t.fail(s3t.key("selection"), e.what());
    }
  }
  s3t.read_list("deletion_probabilities", c.s3t.deletion_probabilities, "numbers");
  s3t.read("horizon", c.s3t.horizon, "an integer");
  if (c.s3t.horizon < 1) s3t.fail(s3t.key("horizon"), "must be at least 1");
  if (c.s3t.selection == trainer::SequenceSelection::kCyclic) {
    if (c.s3t.sequences > trainer::max_cyclic_sequences(c.s3t.slices)) {
      s3t.fail(s3t.key("sequences"), std::to_string(c.s3t.sequences) + " distinct sequences of " +
                                         std::to_string(c.s3t.slices) + " slices do not exist (at most L!)");
    }
  } else {
    if (c.s3t.sequences > c.s3t.slices) s3t.fail(s3t.key("sequences"), "bms builds at most one sequence per slice (sequences <= slices)");
  }
  s3t.reject_unknown_keys();

  auto model = top.child("model");
  if (model.read("architecture", text, "mlp, cnn or convnet")) {
    try {
      c.model.architecture = trainer::parse_architecture(text);
    } catch (const std::invalid_argument&) {
      model.fail(model.key("architecture"), "'" + text + "' is not a backbone; use mlp, cnn or convnet");
    }
  }
  model.read_list("conv_widths", c.model.conv_widths, "positive integers");
  model.read_list("widths", c.model.widths, "positive integers");
  model.read("lora_rank", c.model.lora_rank, "an integer");
  model.read("lora_alpha", c.model.lora_alpha, "a number");
  model.read("num_classes", c.model.num_classes, "an integer");
  model.reject_unknown_keys();

  auto training = top.child("training");
  read_optimizer_keys(training, c.training.optimizer);
  training.read("cache_batch_size", c.training.cache_batch_size, "an integer");
  training.reject_unknown_keys();
  if (c.training.cache_batch_size < 1) training.fail(training.key("cache_batch_size"), "must be at least 1");

  auto pretrain = top.child("pretrain");
  read_optimizer_keys(pretrain, c.pretrain.optimizer);
  pretrain.reject_unknown_keys();

  c.noisy_gd.enabled = root["noisy_gd"].IsDefined();
  auto noisy_gd = top.child("noisy_gd");
  const bool eta_given = read_noisy_gd(noisy_gd, c.noisy_gd);
  if (eta_given && c.noisy_gd.params.eta == 0) noisy_gd.fail(noisy_gd.key("eta"), "must be positive (leave it out for 1/(beta + lambda))");

  // What the settings imply (model.sites, the default step size, BMS's uniform probabilities),
  // then the checks that depend on it.
  trainer::derive_settings(c);
  if (c.s3t.selection == trainer::SequenceSelection::kBms) {
    try {
      trainer::validate_deletion_probabilities(c.s3t.deletion_probabilities, c.s3t.slices);
    } catch (const std::invalid_argument& e) {
      s3t.fail(s3t.key("deletion_probabilities"), e.what());
    }
  }
  if (c.s3t.enabled && trainer::num_blocks(c.model) < c.s3t.slices) {
    model.fail(model.key("widths"), "has " + std::to_string(trainer::num_blocks(c.model)) + " blocks but s3t.slices = " +
                                        std::to_string(c.s3t.slices) + " needs one adapter site per slice; list at least " +
                                        std::to_string(c.s3t.slices) + " blocks");
  }
  try {
    trainer::validate(c.model);
  } catch (const std::invalid_argument& e) {
    top.fail("model", e.what());
  }

  check_noisy_gd(noisy_gd, c.noisy_gd);

  auto retrain = top.child("retrain");
  retrain.read("live_shards_below", c.retrain.live_shards_below, "an integer");
  retrain.read("served_depth_below", c.retrain.served_depth_below, "a number");
  retrain.reject_unknown_keys();
  if (c.retrain.live_shards_below < 0) retrain.fail(retrain.key("live_shards_below"), "must be 0 (off) or more");
  if (!(c.retrain.served_depth_below >= 0 && c.retrain.served_depth_below <= 1))
    retrain.fail(retrain.key("served_depth_below"), "must lie in [0, 1] (0: off)");
  if (!c.s3t.enabled && !c.noisy_gd.enabled)
    top.fail("s3t.enabled", "is false and there is no noisy_gd section: the job would train nothing; add noisy_gd: or enable s3t");

  top.reject_unknown_keys();
  return c;
}

JobConfig load_job_config(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path.string() + ": cannot read the job config; check the path given to --config");
  std::stringstream text;
  text << in.rdbuf();
  return parse_job_config(text.str(), std::filesystem::absolute(path));
}

JobConfig with_job_dir(JobConfig config, const std::filesystem::path& job_dir) {
  if (!job_dir.empty()) config.job_dir = job_dir;
  if (config.job_dir.empty()) throw ConfigError(config.source.string() + ": job_dir: missing; set it in the config or pass --job DIR");
  return config;
}

void check_job_not_served(const std::filesystem::path& job_dir) {
  if (!std::filesystem::exists(storage::job_ledger_path(job_dir))) return;
  throw ConfigError("job " + job_dir.string() +
                    " has a deletion ledger (it has served deletions); training it again would undo them. "
                    "Restore truncated sequences with `lethe retrain --job " + job_dir.string() +
                    "`, or train into a new --job directory");
}

}  // namespace lethe::launch
