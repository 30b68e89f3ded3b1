// trainer/pretrain.h — the frozen backbone: reading dataset records into tensors, pretraining the
// backbone and head on public records, and saving/loading backbone weights in HDF5 (docs/BACKBONE.md).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "storage/dataset.h"
#include "trainer/job_settings.h"
#include "trainer/model.h"

namespace lethe::trainer {

// The model input shape (channels, height, width) of a dataset's records: {H, W} -> (1, H, W),
// {C, H, W} as is, {D} -> (1, 1, D). Throws std::invalid_argument for other ranks.
void set_input_shape(ModelConfig& config, const storage::DatasetLayout& layout);

struct RecordTensors {
  torch::Tensor inputs;  // [N, C, H, W] float32; uint8 features scaled to [0, 1]
  torch::Tensor labels;  // [N] int64
};

// Reads `rows` of `dataset` (in the given order). Throws std::invalid_argument naming the file and
// row when a label lies outside [0, num_classes).
[[nodiscard]] RecordTensors read_records(const storage::Dataset& dataset, const std::vector<std::uint64_t>& rows,
                                         const ModelConfig& config);


struct PretrainReport {
  std::int64_t records = 0;
  double final_loss = 0;  // mean over the last epoch
  double seconds = 0;
};

// Collective. Trains every backbone block and the head (adapters inactive) with Adam and the
// settings' dropout, data-parallel: each batch's settings.micro_batches micro-batches are spread
// over the ranks and their gradients added in order, so every rank ends with the same model and
// the result is deterministic for a seed, a thread count and micro_batches, whatever the rank count.
PretrainReport pretrain_backbone(LetheModel& model, const RecordTensors& data, const PretrainSettings& settings,
                                 std::uint64_t seed, comm::Communicator& comm);

// Sets the model's feature mean (LetheModel::feature_mean) to the mean of its features over
// `records` (the public records: computing it needs no private record), in batches.
void set_feature_mean(LetheModel& model, const torch::Tensor& inputs, std::int64_t batch_size);

// Writes blocks/<b>/weight, blocks/<b>/bias, head/weight, head/bias (float32) and root attributes
// lethe_format = "lethe-backbone", model (JSON), metadata (JSON); committed atomically.
void save_backbone(LetheModel& model, const std::filesystem::path& path, const nlohmann::json& metadata);
// Loads such a file (or one exported from PyTorch with the same dataset names; float32 or float64)
// into `model`. Throws storage::StorageError naming the file, the dataset and both shapes when
// the file does not match the model's config; `model` is left unchanged then.
void load_backbone(LetheModel& model, const std::filesystem::path& path);

}  // namespace lethe::trainer
