// `lethe pretrain`: trains the frozen backbone and head on a dataset's public records, or imports
// backbone weights from an HDF5 file (docs/BACKBONE.md), and writes the config's backbone file.
#include <spdlog/spdlog.h>

#include <torch/torch.h>

#include <iostream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "comm/agree.h"
#include "comm/communicator.h"
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
  std::string backend = "mpi";
};

// Head-alone accuracy of the pretrained backbone on `eval` (the test set by default).
double head_accuracy(trainer::LetheModel& model, const std::filesystem::path& eval, torch::Device device) {
  const auto test = storage::Dataset::open(eval);
  const auto data = trainer::read_records(test, test.select(storage::RecordFilter{}), model.config());
  torch::NoGradGuard no_grad;
  model.set_active_depth(0);
  std::vector<torch::Tensor> parts;
  for (std::int64_t s = 0; s < data.inputs.size(0); s += 1024) {
    parts.push_back(torch::softmax(model.forward(data.inputs.slice(0, s, std::min(data.inputs.size(0), s + 1024)).to(device)), 1).to(torch::kCPU));
  }
  return trainer::accuracy(torch::cat(parts, 0), data.labels);
}

// Every rank trains the same model on the same public records (pretrain_backbone spreads each
// batch's micro-batches over the ranks); rank 0 alone writes the backbone and evaluates it.
void run(const PretrainArgs& args) {
  const auto config = load_job_config(args.config);
  const std::filesystem::path out = args.out.empty() ? config.backbone : std::filesystem::path(args.out);
  auto comm = comm::make_communicator(args.backend);
  // Before any training: an existing backbone (jobs may have been trained on it) is replaced only on request.
  comm::on_root(*comm, "checking the output path", [&] {
    storage::check_output_path(out, args.force ? storage::ExistingOutput::kReplace : storage::ExistingOutput::kRefuse,
                               "--force");
  });
  std::unique_ptr<trainer::LetheModel> model;
  nlohmann::json report;
  std::optional<trainer::RecordTensors> data;
  comm::on_every_rank(*comm, "reading the config, the backbone and the public records", [&] {
    trainer::check_device(config.device, config.source);
    trainer::set_compute_threads(config.pretrain.threads > 0 ? config.pretrain.threads : config.threads);
    if (!std::filesystem::exists(config.dataset)) {
      throw ConfigError(config.source.string() + ": dataset: " + config.dataset.string() +
                        " does not exist; ingest it first (`lethe ingest ...`) or fix the path");
    }
    const auto dataset = storage::Dataset::open(config.dataset);
    const auto model_config = trainer::job_model_config(config, dataset);
    model = std::make_unique<trainer::LetheModel>(model_config, trainer::mix_seed(config.seed, 20));
    if (model_config.trunk) model->attach_trunk(trainer::load_job_trunk(config, model_config));
    report = {{"backbone", out.string()}, {"model", trainer::to_json(model_config)}};
    storage::RecordFilter filter;
    filter.public_records = storage::PublicRecords::only;
    const auto rows = dataset.select(filter);
    if (!args.import_file.empty()) {
      trainer::load_backbone(*model, args.import_file);  // validates every shape against the config
      report["imported_from"] = args.import_file;
    } else if (rows.empty()) {
      throw ConfigError(config.dataset.string() + " has no public records to pretrain on; ingest with --public-fraction, "
                        "or bring a backbone with `lethe pretrain --import FILE`");
    }
    model->to(config.device == "cuda" ? torch::kCUDA : torch::kCPU);
    if (!rows.empty()) data = trainer::read_records(dataset, rows, model_config);
  });
  const torch::Device device = model->head_weight().device();
  if (data && args.import_file.empty()) {
    trainer::PretrainReport result;
    comm::on_every_rank(*comm, "pretraining", [&] { result = trainer::pretrain_backbone(*model, *data, config.pretrain, config.seed, *comm); });
    report["records"] = result.records;
    report["final_loss"] = result.final_loss;
    report["seconds"] = result.seconds;
    report["ranks"] = comm->size();
  }
  comm::on_root(*comm, "writing and evaluating the backbone", [&] {
    // Centres the noisy-GD model's features; the public records are all it may look at.
    if (data) trainer::set_feature_mean(*model, data->inputs, config.training.cache_batch_size);
    trainer::save_backbone(*model, out, {{"source", args.import_file.empty() ? "pretrain" : args.import_file},
                                         {"dataset", config.dataset.string()},
                                         {"seed", config.seed}});
    const std::filesystem::path eval = args.eval_data.empty() ? config.test_dataset : std::filesystem::path(args.eval_data);
    if (!eval.empty()) {
      report["head_accuracy"] = head_accuracy(*model, eval, device);
      report["eval_data"] = eval.string();
    }
    std::cout << report.dump(2) << std::endl;
  });
}

void install(CLI::App& app) {
  auto args = std::make_shared<PretrainArgs>();
  CLI::App* cmd = app.add_subcommand("pretrain", "Train (or import) the frozen backbone and head on public records");
  cmd->footer(
      "Examples:\n  lethe pretrain --config launch/examples/fashion_s3t.yaml\n"
      "  mpirun -np 2 lethe pretrain --config launch/examples/fashion_s3t.yaml   # data-parallel (pretrain.micro_batches)\n"
      "  lethe pretrain --config job.yaml --import exported_from_pytorch.h5   # layout: docs/BACKBONE.md");
  cmd->add_option("--config", args->config, "YAML job config (model, pretrain, dataset and backbone keys)")->required();
  cmd->add_option("--import", args->import_file, "Backbone weights (HDF5) to check against the config and install");
  cmd->add_option("--out", args->out,
                  "Where to write the backbone (default: the config's backbone). An existing file is refused unless "
                  "--force; links, devices and directories are always refused");
  cmd->add_flag("--force", args->force, "Replace an existing backbone file (atomically, once the new one is complete)");
  cmd->add_option("--eval-data", args->eval_data, "Dataset for the head-alone accuracy (default: test_dataset)");
  cmd->add_option("--backend", args->backend, "Communicator backend: mpi or nccl")->capture_default_str();
  cmd->callback([args] { run(*args); });
}

const CommandRegistration registration{20, install};

}  // namespace
}  // namespace lethe::launch
