#include "trainer/s3t_trainer.h"

#include <chrono>
#include <random>
#include <stdexcept>

namespace lethe::trainer {

std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t z = seed;
  for (const auto v : {a, b, c}) {
    z += 0x9E3779B97F4A7C15ULL + v * 0xD1B54A32D192ED03ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
  }
  return z;
}

PrefixState capture_prefix(LetheModel& model, int prefix) {
  PrefixState state;
  state.prefix = prefix;
  torch::NoGradGuard no_grad;
  for (int s = 1; s <= prefix; ++s) {
    auto& layer = model.site(s);
    state.tensors.emplace_back("site" + std::to_string(s) + ".lora_A", layer.lora_a().detach().to(torch::kCPU).clone());
    state.tensors.emplace_back("site" + std::to_string(s) + ".lora_B", layer.lora_b().detach().to(torch::kCPU).clone());
  }
  state.tensors.emplace_back("head.weight", model.head_weight().detach().to(torch::kCPU).clone());
  state.tensors.emplace_back("head.bias", model.head_bias().detach().to(torch::kCPU).clone());
  return state;
}

void apply_prefix(LetheModel& model, const PrefixState& state) {
  if (state.prefix < 0 || state.prefix > model.num_sites()) {
    throw std::invalid_argument("prefix " + std::to_string(state.prefix) + " does not fit a model with " +
                                std::to_string(model.num_sites()) + " adapter sites");
  }
  auto find = [&](const std::string& name) -> const torch::Tensor& {
    for (const auto& [n, t] : state.tensors) {
      if (n == name) return t;
    }
    throw std::invalid_argument("prefix state " + std::to_string(state.prefix) + " lacks tensor '" + name + "'");
  };
  auto load = [&](torch::Tensor& target, const std::string& name) {
    const auto& source = find(name);
    if (source.sizes() != target.sizes()) {
      throw std::invalid_argument("tensor '" + name + "' has shape " + c10::str(source.sizes()) +
                                  " but the model expects " + c10::str(target.sizes()) +
                                  "; the checkpoint was written for another model config");
    }
    target.copy_(source.to(target.device()));
  };
  torch::NoGradGuard no_grad;
  for (int s = 1; s <= state.prefix; ++s) {
    load(model.site(s).lora_a(), "site" + std::to_string(s) + ".lora_A");
    load(model.site(s).lora_b(), "site" + std::to_string(s) + ".lora_B");
  }
  load(model.head_weight(), "head.weight");
  load(model.head_bias(), "head.bias");
  model.set_active_depth(state.prefix);
}

S3TTrainer::S3TTrainer(LetheModel& model, OptimizerSettings options) : model_(model), options_(options) {
  if (options_.epochs < 0) throw std::invalid_argument("training.epochs: must not be negative");
  if (options_.batch_size < 1) throw std::invalid_argument("training.batch_size: must be at least 1");
  if (!(options_.learning_rate > 0)) throw std::invalid_argument("training.learning_rate: must be positive");
}

std::vector<std::int64_t> S3TTrainer::prefix_records(const std::vector<int>& slice_of_record,
                                                     const std::vector<int>& order, int prefix) {
  std::vector<bool> in_prefix;
  for (int i = 0; i < prefix; ++i) {
    const auto slice = static_cast<std::size_t>(order.at(static_cast<std::size_t>(i)));
    if (in_prefix.size() <= slice) in_prefix.resize(slice + 1, false);
    in_prefix[slice] = true;
  }
  std::vector<std::int64_t> records;
  for (std::size_t r = 0; r < slice_of_record.size(); ++r) {
    const auto slice = static_cast<std::size_t>(slice_of_record[r]);
    if (slice < in_prefix.size() && in_prefix[slice]) records.push_back(static_cast<std::int64_t>(r));
  }
  return records;
}

std::int64_t S3TTrainer::train_step(const torch::Tensor& inputs, bool from_site, const torch::Tensor& labels,
                                    const std::vector<std::int64_t>& records, int site, std::uint64_t step_seed) {
  auto params = model_.select_trainable_for_step(site);
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(options_.learning_rate));
  const auto device = model_.head_weight().device();
  std::vector<std::int64_t> permutation = records;
  std::int64_t samples = 0;
  for (int epoch = 0; epoch < options_.epochs; ++epoch) {
    // Fisher-Yates with an explicit engine: the same order on every platform and rank.
    std::mt19937_64 engine(mix_seed(step_seed, static_cast<std::uint64_t>(epoch)));
    for (std::size_t k = permutation.size(); k > 1; --k) {
      const auto j = static_cast<std::size_t>(engine() % k);
      std::swap(permutation[k - 1], permutation[j]);
    }
    const auto all = torch::tensor(permutation, torch::kInt64).to(device);
    for (std::int64_t start = 0; start < all.size(0); start += options_.batch_size) {
      const auto index = all.slice(0, start, std::min(all.size(0), start + options_.batch_size));
      const auto x = inputs.index_select(0, from_site ? index : index.to(inputs.device()));
      const auto y = labels.index_select(0, index);
      optimizer.zero_grad();
      const auto logits = from_site ? model_.forward_from_site(site, x) : model_.forward(x.to(device));
      auto loss = torch::cross_entropy_loss(logits, y);
      loss.backward();
      optimizer.step();
      samples += index.size(0);
    }
  }
  model_.freeze_all();
  return samples;
}

SequenceStats S3TTrainer::train_sequence(const ActivationCache& cache, const torch::Tensor& labels,
                                         const std::vector<int>& slice_of_record, const std::vector<int>& order,
                                         std::uint64_t job_seed, const PrefixState* resume_from,
                                         const PrefixCallback& on_prefix) {
  if (cache.size() != labels.size(0)) {
    throw std::invalid_argument("activation cache holds " + std::to_string(cache.size()) + " records but there are " +
                                std::to_string(labels.size(0)) + " labels");
  }
  return run(&cache, nullptr, labels, slice_of_record, order, job_seed, resume_from, on_prefix);
}

SequenceStats S3TTrainer::train_sequence_uncached(const torch::Tensor& inputs, const torch::Tensor& labels,
                                                  const std::vector<int>& slice_of_record,
                                                  const std::vector<int>& order, std::uint64_t job_seed,
                                                  const PrefixState* resume_from, const PrefixCallback& on_prefix) {
  if (inputs.size(0) != labels.size(0)) throw std::invalid_argument("inputs and labels differ in record count");
  return run(nullptr, &inputs, labels, slice_of_record, order, job_seed, resume_from, on_prefix);
}

SequenceStats S3TTrainer::run(const ActivationCache* cache, const torch::Tensor* raw_inputs,
                              const torch::Tensor& labels, const std::vector<int>& slice_of_record,
                              const std::vector<int>& order, std::uint64_t job_seed, const PrefixState* resume_from,
                              const PrefixCallback& on_prefix) {
  const int depth = model_.num_sites();
  if (static_cast<int>(order.size()) != depth) {
    throw std::invalid_argument("sequence has " + std::to_string(order.size()) + " slices but the model has " +
                                std::to_string(depth) + " adapter sites; they must be equal (model.sites = slices)");
  }
  if (static_cast<std::int64_t>(slice_of_record.size()) != labels.size(0)) {
    throw std::invalid_argument("slice assignment and labels disagree on the number of records");
  }
  const auto start_time = std::chrono::steady_clock::now();
  const auto device_labels = labels.to(model_.head_weight().device());
  int first_step = 1;
  if (resume_from != nullptr) {
    apply_prefix(model_, *resume_from);
    first_step = resume_from->prefix + 1;
  }
  SequenceStats stats;
  for (int step = first_step; step <= depth; ++step) {
    model_.site(step).reset_adapter(mix_seed(job_seed, 1, static_cast<std::uint64_t>(step)));
    model_.set_active_depth(step);
    const auto records = prefix_records(slice_of_record, order, step);
    const auto step_seed = mix_seed(job_seed, 2, static_cast<std::uint64_t>(step));
    stats.samples += cache != nullptr
                         ? train_step(cache->site_input(step), true, device_labels, records, step, step_seed)
                         : train_step(*raw_inputs, false, device_labels, records, step, step_seed);
    if (on_prefix) on_prefix(capture_prefix(model_, step));
  }
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  return stats;
}

}  // namespace lethe::trainer
