// `lethe pretrain`: trains the frozen backbone and head on a dataset's public records, or imports
// backbone weights from an HDF5 file (docs/BACKBONE.md), and writes the config's backbone file.
#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "launch/command_registry.h"
#include "launch/job_config.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "trainer/compute_threads.h"
#include "trainer/ensemble.h"
#include "trainer/job.h"
#include "trainer/pretrain.h"
#include "trainer/s3t_trainer.h"

namespace lethe::launch {
namespace {

struct PretrainArgs {
  std::string config;
  std::string import_file;
  std::string out;
  std::string eval_data;
  bool force = false;
};

void run(const PretrainArgs& args) {
  const auto config = load_job_config(args.config);
  const std::filesystem::path out = args.out.empty() ? config.backbone : std::filesystem::path(args.out);
  // Before any training: an existing backbone (jobs may have been trained on it) is replaced only on request.
  storage::check_output_path(out, args.force ? storage::ExistingOutput::kReplace : storage::ExistingOutput::kRefuse,
                             "--force");
  trainer::check_device(config.device, config.source);
  // Pretraining runs alone (one process), so it may use more threads than each rank of a job.
  trainer::set_compute_threads(config.pretrain.threads > 0 ? config.pretrain.threads : config.threads);
  const torch::Device device(config.device == "cuda" ? torch::kCUDA : torch::kCPU);
  if (!std::filesystem::exists(config.dataset)) {
    throw ConfigError(config.source.string() + ": dataset: " + config.dataset.string() +
                      " does not exist; ingest it first (`lethe ingest ...`) or fix the path");
  }
  const auto dataset = storage::Dataset::open(config.dataset);
  const auto model_config = trainer::job_model_config(config, dataset);
  trainer::LetheModel model(model_config, trainer::mix_seed(config.seed, 20));
  if (model_config.trunk) model.attach_trunk(trainer::load_job_trunk(config, model_config));
  nlohmann::json report = {{"backbone", out.string()}, {"model", trainer::to_json(model_config)}};
  storage::RecordFilter filter;
  filter.public_records = storage::PublicRecords::only;
  const auto rows = dataset.select(filter);
  if (!args.import_file.empty()) {
    trainer::load_backbone(model, args.import_file);  // validates every shape against the config
    report["imported_from"] = args.import_file;
  } else if (rows.empty()) {
    throw ConfigError(config.dataset.string() + " has no public records to pretrain on; ingest with --public-fraction, "
                      "or bring a backbone with `lethe pretrain --import FILE`");
  }
  model.to(device);
  if (!rows.empty()) {
    const auto data = trainer::read_records(dataset, rows, model_config);
    if (args.import_file.empty()) {
      const auto result = trainer::pretrain_backbone(model, data, config.pretrain, config.seed);
      report["records"] = result.records;
      report["final_loss"] = result.final_loss;
      report["seconds"] = result.seconds;
    }
    // Centres the noisy-GD model's features; the public records are all it may look at.
    trainer::set_feature_mean(model, data.inputs, config.training.cache_batch_size);
  }
  trainer::save_backbone(model, out, {{"source", args.import_file.empty() ? "pretrain" : args.import_file},
                                      {"dataset", config.dataset.string()},
                                      {"seed", config.seed}});
  std::filesystem::path eval = args.eval_data.empty() ? config.test_dataset : std::filesystem::path(args.eval_data);
  if (!eval.empty()) {
    const auto test = storage::Dataset::open(eval);
    const auto data = trainer::read_records(test, test.select(storage::RecordFilter{}), model_config);
    torch::NoGradGuard no_grad;
    model.set_active_depth(0);
    std::vector<torch::Tensor> parts;
    for (std::int64_t s = 0; s < data.inputs.size(0); s += 1024) {
      parts.push_back(torch::softmax(model.forward(data.inputs.slice(0, s, std::min(data.inputs.size(0), s + 1024)).to(device)), 1).to(torch::kCPU));
    }
    report["head_accuracy"] = trainer::accuracy(torch::cat(parts, 0), data.labels);
    report["eval_data"] = eval.string();
  }
  std::cout << report.dump(2) << std::endl;
}

void install(CLI::App& app) {
  auto args = std::make_shared<PretrainArgs>();
  CLI::App* cmd = app.add_subcommand("pretrain", "Train (or import) the frozen backbone and head on public records");
  cmd->footer(
      "Examples:\n  lethe pretrain --config launch/examples/fashion_s3t.yaml\n"
      "  lethe pretrain --config job.yaml --import exported_from_pytorch.h5   # layout: docs/BACKBONE.md");
  cmd->add_option("--config", args->config, "YAML job config (model, pretrain, dataset and backbone keys)")->required();
  cmd->add_option("--import", args->import_file, "Backbone weights (HDF5) to check against the config and install");
  cmd->add_option("--out", args->out,
                  "Where to write the backbone (default: the config's backbone). An existing file is refused unless "
                  "--force; links, devices and directories are always refused");
  cmd->add_flag("--force", args->force, "Replace an existing backbone file (atomically, once the new one is complete)");
  cmd->add_option("--eval-data", args->eval_data, "Dataset for the head-alone accuracy (default: test_dataset)");
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{20, install};

}  // namespace
}  // namespace lethe::launch
