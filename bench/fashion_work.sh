# bench/fashion_work.sh — sourced by bench/s3t/run.sh and bench/pretrain/run.sh: a work directory
# under the build directory (ignored by git) laid out as the example configs expect (their
# ../../data and ../../runs paths), with the demo's Fashion-MNIST split ingested into its data/
# once (10% public, seed 1). Usage: fashion_work BUILD_DIR NAME [RANKS]; leaves the shell in it
# and sets $lethe and $mpi (mpiexec for RANKS ranks, default 2).
fashion_work() {
  local build=$1 name=$2 ranks=${3:-2}
  local fm=${LETHE_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  lethe="$build/lethe --log-level warn"
  mpi="mpiexec --oversubscribe -np $ranks"
  [ "$(id -u)" = 0 ] && mpi="$mpi --allow-run-as-root"
  mkdir -p "$build/$name/data" "$build/$name/runs" "$build/$name/launch/examples"
  cd "$build/$name"
  if [ ! -f data/fashion-train.h5 ]; then
    $lethe ingest --format idx --images "$fm/train-images-idx3-ubyte.gz" --labels "$fm/train-labels-idx1-ubyte.gz" \
      --out data/fashion-train.h5 --public-fraction 0.1 --seed 1 >/dev/null
    $lethe ingest --format idx --images "$fm/t10k-images-idx3-ubyte.gz" --labels "$fm/t10k-labels-idx1-ubyte.gz" \
      --out data/fashion-test.h5 --seed 1 >/dev/null
  fi
}
