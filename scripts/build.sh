#!/usr/bin/env bash
# Configures and builds Lethe into build/ (Release by default; BUILD_TYPE=Debug to change).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${BUILD_DIR:-build}
generator=()
if command -v ninja >/dev/null && [[ ! -f "$build_dir/Makefile" ]]; then generator=(-G Ninja); fi
cmake -S . -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" >/dev/null
cmake --build "$build_dir" --parallel "$(nproc)"
