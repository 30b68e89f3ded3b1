// trainer/model_inputs.h — the one mapping from a dataset's feature values to model inputs, used by
// training (read_records) and serving (POST /v1/predict) alike, so the two never drift apart.
#pragma once

#include <ATen/core/Tensor.h>

#include "storage/dataset.h"
#include "trainer/model_config.h"

namespace lethe::trainer {

// `values`: [N, values per record] in the dataset's units (uint8 pixels 0..255, or float32), any
// numeric dtype. Returns [N, C, H, W] float32 on the CPU: uint8 data scaled to [0, 1] (x / 255 in
// float32), float32 data as is. std::invalid_argument when the width does not match the model.
[[nodiscard]] at::Tensor to_model_inputs(const at::Tensor& values, storage::FeatureType type, const ModelConfig& config);

}  // namespace lethe::trainer
