# bench/service/config.sh, sourced by run.sh, retrain.sh and demo_job.sh: what they need from the
# demo and the build, the job config they train, and how they start the service.
# shellcheck shell=bash
# Needs $root (the repository). BUILD_DIR and LETHE_DEMO_DIR as for scripts/.
build=${BUILD_DIR:-build}
lethe="$root/$build/lethe"
load="$root/$build/lethe_bench_load"
data=$(realpath -m "${LETHE_DEMO_DIR:-demo-out}")/data

# Exits naming what is missing ($data: the demo's data; $lethe, $load: the binaries); sets mpi.
bench_requirements() {
  for f in fashion-train.h5 fashion-test.h5 fashion-backbone.h5; do
    [[ -f "$data/$f" ]] || { echo "bench/service: $data/$f is missing; run ./scripts/demo.sh first" >&2; exit 1; }
  done
  [[ -x "$lethe" && -x "$load" ]] || { echo "bench/service: build first (./scripts/build.sh)" >&2; exit 1; }
  mpi=(mpiexec --oversubscribe -np 2)
  [[ $(id -u) -eq 0 ]] && mpi+=(--allow-run-as-root)
}

# The job config from the demo's data ($data), the training set given as $1 (each bench works on
# its own copy).
common() {  # the demo's model and training settings (launch/examples/fashion_s3t.yaml)
  cat <<YAML
dataset: $1
test_dataset: $data/fashion-test.h5
backbone: $data/fashion-backbone.h5
seed: 1
model: {architecture: convnet, conv_widths: [32, 64], widths: [256, 128, 128, 128], lora_rank: 32, lora_alpha: 64, num_classes: 10}
training: {epochs: 5, batch_size: 128, learning_rate: 0.003}
YAML
}

# The demo's S3T job (4 x 4 x 4) on the training set $1.
s3t_config() {
  common "$1"
  echo "s3t: {shards: 4, slices: 4, sequences: 4}"
}

# serve JOB [LAUNCHER...]: starts `lethe serve --job JOB` in the background (under LAUNCHER, e.g.
# mpiexec, when given) with the token file ./token; sets server (its pid) and port once it listens.
# Its first stdout line (the port) goes to JOB.port, its log to JOB.log.
serve() {
  local job=$1
  shift
  rm -f "$job.port"
  "$@" "$lethe" serve --job "$job" --listen 127.0.0.1:0 --token-file token > "$job.port" 2> "$job.log" &
  server=$!
  for _ in $(seq 1200); do [[ -s "$job.port" ]] && break; sleep 0.1; done
  port=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["port"])' "$job.port")
}
