#!/usr/bin/env bash
# Installs Lethe's build and run dependencies on Debian (DESIGN.md §9).
# Idempotent and quiet: installs only what is missing; works as root or through sudo.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ninja-build
  libtorch-dev
  libopenblas0-pthread
  libopenmpi-dev openmpi-bin
  libhdf5-dev
  libboost-dev
  nlohmann-json3-dev
  libsqlite3-dev
  libyaml-cpp-dev
  libcli11-dev
  libspdlog-dev
  libgtest-dev libgmock-dev
  libbenchmark-dev
  libssl-dev zlib1g-dev
  # the reference BLAS beside OpenBLAS: test_retrain compares a retrain bit for bit with a fresh run on it
  libblas3
  dataset-fashion-mnist
  python3 python3-numpy python3-h5py python3-matplotlib python3-torch
  # tests/slurm runs launch/slurm/*.sbatch on a one-node SLURM cluster it starts (sbatch, srun: slurm-client)
  slurmd slurmctld slurm-client munge
  # scripts/fuzz.sh: clang with libFuzzer and the ASan/UBSan runtimes, llvm-symbolizer for its stacks
  clang libclang-rt-14-dev llvm
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#packages[@]} dependencies present"
  exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
