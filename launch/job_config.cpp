#include "launch/job_config.h"

#include <yaml-cpp/yaml.h>

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <fstream>
#include <set>
#include <sstream>

#include "storage/hashing.h"
#include "storage/ledger.h"
#include "trainer/accountant.h"

namespace lethe::launch {

namespace {

// Upper bounds of the numeric settings (docs/CONFIG.md lists them): far above any sensible job, and
// low enough that no value asks for memory or threads that cannot exist.
constexpr int kMaxThreads = 1024;
constexpr int kMaxShards = 10000;
constexpr int kMaxSlices = 64;
constexpr int kMaxSequences = 1024;
constexpr int kMaxHorizon = 1000000;
constexpr std::size_t kMaxBlocks = 64;         // entries of model.widths and model.conv_widths
constexpr std::int64_t kMaxWidth = 65536;       // units or channels of one block
constexpr std::int64_t kMaxLoraRank = 4096;
constexpr std::int64_t kMaxClasses = 100000;
constexpr int kMaxEpochs = 100000;
constexpr std::int64_t kMaxBatch = 1 << 20;     // batch_size, cache_batch_size
constexpr std::int64_t kMaxNoisyGdSteps = 10000000;
constexpr double kMaxLearningRate = 100;
constexpr double kMaxParameter = 1e6;           // lora_alpha, lambda, eta, sigma, clip, target_epsilon

// "1e+06" for messages about number ranges.
std::string number_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// Walks one YAML mapping: typed reads that name the key in errors, and a final check for keys
// nobody read (typos such as "epoch" instead of "epochs" must not be silently ignored).
class Section {
 public:
  Section(const YAML::Node& node, std::string prefix, const std::filesystem::path& origin)
      : node_(node), prefix_(std::move(prefix)), origin_(origin) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(prefix_.empty() ? "(document)" : prefix_.substr(0, prefix_.size() - 1), "must be a mapping of keys to values");
    reject_duplicate_keys();
  }

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw ConfigError(origin_.string() + ": " + key + ": " + what);
  }

  [[nodiscard]] std::string key(const std::string& name) const { return prefix_ + name; }

  template <typename T>
  [[nodiscard]] T checked_integer(const std::string& key, const std::string& text, const char* type_name, T min, T max) const;

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

  // An integer setting within [min, max]: "expected <type_name>, got 'x'" when it is not an integer,
  // "must be at least MIN" below the range and "V is out of range (at most MAX)" above it, so that
  // no huge value reaches an allocation.
  template <typename T>
  bool read_integer(const std::string& name, T& out, const char* type_name, T min, T max) {
    seen_.insert(name);
    if (!node_ || node_.IsNull() || !node_[name]) return false;
    const auto value = node_[name];
    if (!value.IsScalar()) fail(key(name), std::string("expected ") + type_name);
    out = checked_integer(key(name), value.Scalar(), type_name, min, max);
    return true;
  }

  // A number setting that must be finite and at most `max` ("V is out of range (at most MAX)");
  // lower bounds are checked by the caller, with the reason a value is too small.
  bool read_number(const std::string& name, double& out, double max) {
    if (!read(name, out, "a number")) return false;
    if (!std::isfinite(out) || out > max)
      fail(key(name), "'" + node_[name].Scalar() + "' is out of range: give a finite number at most " + number_text(max));
    return true;
  }

  // A list of integers, each within [min, max], at most `max_entries` long.
  template <typename T>
  bool read_integer_list(const std::string& name, std::vector<T>& out, T min, T max, std::size_t max_entries) {
    seen_.insert(name);
    if (!node_ || node_.IsNull() || !node_[name]) return false;
    const auto value = node_[name];
    if (!value.IsSequence()) fail(key(name), "expected a list of positive integers");
    if (value.size() > max_entries)
      fail(key(name), "has " + std::to_string(value.size()) + " entries; at most " + std::to_string(max_entries) + " allowed");
    out.clear();
    for (std::size_t i = 0; i < value.size(); ++i) {
      const std::string entry = key(name) + "[" + std::to_string(i) + "]";
      if (!value[i].IsScalar()) fail(entry, "expected an integer");
      out.push_back(checked_integer(entry, value[i].Scalar(), "an integer", min, max));
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

  // yaml-cpp keeps the first of two equal keys and drops the second without a word: refuse them.
  void reject_duplicate_keys() const {
    if (!node_ || !node_.IsMap()) return;
    std::map<std::string, int> line_of;
    for (const auto& item : node_) {
      const std::string name = item.first.IsScalar() ? item.first.Scalar() : std::string("(a non-scalar key)");
      const int line = item.first.Mark().line + 1;
      const auto [first, inserted] = line_of.emplace(name, line);
      if (!inserted)
        fail(key(name), "appears twice, on lines " + std::to_string(first->second) + " and " + std::to_string(line) +
                            " (YAML would silently keep the first); keep one");
    }
  }

  void reject_unknown_keys() const {
    if (!node_ || !node_.IsMap()) return;
    const auto known = [this] {
      std::string names;
      for (const auto& k : seen_) names += (names.empty() ? "" : ", ") + k;
      return names;
    };
    for (const auto& item : node_) {
      // YAML allows a list or a mapping as a key (`? shards: 4`); no key of a job config is one.
      if (!item.first.IsScalar()) {
        fail(prefix_.empty() ? "(document)" : prefix_.substr(0, prefix_.size() - 1),
             "has a key that is a YAML list or mapping, not a name (a stray `?`, or mis-indented lines); known keys here: " +
                 known());
      }
      const auto name = item.first.Scalar();
      if (!seen_.count(name)) fail(key(name), "unknown key; known keys here: " + known());
    }
  }

 private:
  YAML::Node node_;
  std::string prefix_;
  std::filesystem::path origin_;
  std::set<std::string> seen_;
};

// Integer text within [min, max] (see Section::read_integer); fails naming `key`.
template <typename T>
T Section::checked_integer(const std::string& key, const std::string& text, const char* type_name, T min, T max) const {
  const std::string range = "give an integer from " + std::to_string(min) + " to " + std::to_string(max);
  const char* first = text.data();
  const char* last = text.data() + text.size();
  if (first != last && *first == '+') ++first;
  T value{};
  const auto [end, ec] = std::from_chars(first, last, value);
  if (ec == std::errc() && end == last) {
    if (value < min) fail(key, "must be at least " + std::to_string(min) + ", got " + text);
    if (value > max) fail(key, text + " is out of range (at most " + std::to_string(max) + "): " + range);
    return value;
  }
  if (ec == std::errc::result_out_of_range && end == last) {  // beyond the type itself
    if (text.front() == '-') fail(key, "must be at least " + std::to_string(min) + ", got " + text);
    fail(key, text + " is out of range (at most " + std::to_string(max) + "): " + range);
  }
  // A negative count, or a number spelled otherwise (1e12): say which.
  char* parsed_end = nullptr;
  const double number = std::strtod(text.c_str(), &parsed_end);
  if (!text.empty() && parsed_end == text.c_str() + text.size() && std::isfinite(number) && number == std::floor(number)) {
    if (number < static_cast<double>(min)) fail(key, "must be at least " + std::to_string(min) + ", got " + text);
    if (number > static_cast<double>(max)) fail(key, text + " is out of range (at most " + std::to_string(max) + "): " + range);
  }
  fail(key, std::string("expected ") + type_name + ", got '" + text + "'");
}

std::filesystem::path resolve(const std::filesystem::path& origin, const std::string& value) {
  std::filesystem::path p(value);
  if (p.is_relative()) p = origin.parent_path() / p;
  return p.lexically_normal();
}

// epochs, batch_size and learning_rate: read and checked alike in `training` and `pretrain`.
void read_optimizer_keys(Section& section, trainer::OptimizerSettings& settings) {
  section.read_integer("epochs", settings.epochs, "an integer", 1, kMaxEpochs);
  section.read_integer<std::int64_t>("batch_size", settings.batch_size, "an integer", 1, kMaxBatch);
  section.read_number("learning_rate", settings.learning_rate, kMaxLearningRate);
  if (!(settings.learning_rate > 0) || !std::isfinite(settings.learning_rate))
    section.fail(section.key("learning_rate"), "must be a positive number");
}

// The noisy_gd section, checked against the accountant's assumptions (trainer/accountant.h) so a
// config that could not certify a deletion fails here, naming its key, not in the middle of a run.
// Returns whether eta was given.
bool read_noisy_gd(Section& section, trainer::NoisyGdSettings& settings) {
  section.read("enabled", settings.enabled, "true or false");
  section.read_number("lambda", settings.params.lambda, kMaxParameter);
  const bool eta_given = section.read_number("eta", settings.params.eta, kMaxParameter);
  section.read_number("sigma", settings.params.sigma, kMaxParameter);
  section.read_number("clip", settings.params.clip, kMaxParameter);
  section.read_integer<std::int64_t>("steps", settings.train_steps, "an integer", 1, kMaxNoisyGdSteps);
  section.read_number("target_epsilon", settings.target_epsilon, kMaxParameter);
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
  top.read_integer<std::uint64_t>("seed", c.seed, "a non-negative integer", 0, std::numeric_limits<std::uint64_t>::max());
  top.read("device", c.device, "a string");
  if (c.device != "cpu" && c.device != "cuda") top.fail("device", "'" + c.device + "' is not a device; use cpu or cuda");
  top.read_integer("threads", c.threads, "an integer", 1, kMaxThreads);

  auto s3t = top.child("s3t");
  s3t.read("enabled", c.s3t.enabled, "true or false");
  s3t.read_integer("shards", c.s3t.shards, "an integer", 1, kMaxShards);
  s3t.read_integer("slices", c.s3t.slices, "an integer", 1, kMaxSlices);
  s3t.read_integer("sequences", c.s3t.sequences, "an integer", 1, kMaxSequences);
  if (s3t.read("selection", text, "cyclic or bms")) {
    try {
      c.s3t.selection = trainer::parse_sequence_selection(text);
    } catch (const std::invalid_argument& e) {
      s3t.fail(s3t.key("selection"), e.what());
    }
  }
  s3t.read_list("deletion_probabilities", c.s3t.deletion_probabilities, "numbers");
  s3t.read_integer("horizon", c.s3t.horizon, "an integer", 1, kMaxHorizon);
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
  model.read_integer_list<std::int64_t>("conv_widths", c.model.conv_widths, 1, kMaxWidth, kMaxBlocks);
  model.read_integer_list<std::int64_t>("widths", c.model.widths, 1, kMaxWidth, kMaxBlocks);
  model.read_integer<std::int64_t>("lora_rank", c.model.lora_rank, "an integer", 1, kMaxLoraRank);
  model.read_number("lora_alpha", c.model.lora_alpha, kMaxParameter);
  model.read_integer<std::int64_t>("num_classes", c.model.num_classes, "an integer", 2, kMaxClasses);
  if (model.read("trunk", text, "a path")) {
    c.trunk = resolve(origin, text);
    if (!std::filesystem::is_regular_file(c.trunk))
      model.fail(model.key("trunk"), c.trunk.string() + " does not exist or is not a file; save the PyTorch trunk "
                                     "with torch.jit.save (docs/BACKBONE.md) or fix the path");
    // The trunk's identity enters the model config (and so the config digest) here; its shapes
    // once it is probed on the dataset (trainer::job_model_config).
    c.model.trunk = trainer::TrunkSpec{storage::sha256_file(c.trunk), {}, {}};
  }
  model.reject_unknown_keys();

  auto training = top.child("training");
  read_optimizer_keys(training, c.training.optimizer);
  training.read_integer<std::int64_t>("cache_batch_size", c.training.cache_batch_size, "an integer", 1, kMaxBatch);
  training.reject_unknown_keys();

  auto pretrain = top.child("pretrain");
  read_optimizer_keys(pretrain, c.pretrain.optimizer);
  pretrain.read_number("dropout", c.pretrain.dropout, 1.0);
  if (!(c.pretrain.dropout >= 0 && c.pretrain.dropout < 1))
    pretrain.fail(pretrain.key("dropout"), "must be at least 0 and below 1 (the probability of dropping a value)");
  pretrain.read_integer("threads", c.pretrain.threads, "an integer", 1, kMaxThreads);
  pretrain.read_integer("micro_batches", c.pretrain.micro_batches, "an integer", 1, static_cast<int>(kMaxBatch));
  if (c.pretrain.micro_batches > c.pretrain.optimizer.batch_size)
    pretrain.fail(pretrain.key("micro_batches"), "is " + std::to_string(c.pretrain.micro_batches) +
                                                     ", more than batch_size (" + std::to_string(c.pretrain.optimizer.batch_size) +
                                                     "): each micro-batch needs at least one record of a batch");
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
  retrain.read_integer("live_shards_below", c.retrain.live_shards_below, "an integer", 0, kMaxShards);
  retrain.read("served_depth_below", c.retrain.served_depth_below, "a number");
  retrain.reject_unknown_keys();
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
