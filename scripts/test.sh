#!/usr/bin/env bash
# README's test command: installs dependencies, builds, and runs the whole test suite with ctest
# (unit tests, and MPI tests with 2 and 3 ranks under mpiexec), then the fuzz targets (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
# Open MPI refuses root unless told; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
(cd "${BUILD_DIR:-build}" && ctest --output-on-failure --timeout 600 "$@")
# Then the fuzz targets (fuzz/README.md): clang build in build-fuzz/, regressions replayed, 60 s each
# (FUZZ_SECONDS); fails on any crash, naming the input.
./scripts/fuzz.sh
