# bench/service/config.sh, sourced by run.sh and retrain.sh: the job config both train, from the
# demo's data ($data) with the training set given as $1 (each bench works on its own copy).
# shellcheck shell=bash
common() {  # the demo's model and training settings (launch/examples/fashion_s3t.yaml)
  cat <<YAML
dataset: $1
test_dataset: $data/fashion-test.h5
backbone: $data/fashion-backbone.h5
seed: 1
model: {architecture: convnet, conv_widths: [32, 64], widths: [256, 128, 128, 128], lora_rank: 8, lora_alpha: 16, num_classes: 10}
training: {epochs: 3, batch_size: 128, learning_rate: 0.003}
YAML
}
