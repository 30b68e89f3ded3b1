#include "comm/mpi_runtime.h"

#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // Open MPI's MPIX_CUDA_AWARE_SUPPORT
#endif

#include <mutex>
#include <string>

#include "comm/communicator.h"

namespace lethe::comm {
namespace {

bool query_cuda_aware() {
#if defined(MPIX_CUDA_AWARE_SUPPORT) && MPIX_CUDA_AWARE_SUPPORT
  return MPIX_Query_cuda_support() == 1;
#else
  return false;
#endif
}

}  // namespace

std::shared_ptr<MpiRuntime> MpiRuntime::acquire() {
  static std::mutex mutex;
  // Keeps MPI up until static destruction: MPI cannot be initialized twice in one process,
  // so the runtime must not finalize merely because the last communicator went away.
  static std::shared_ptr<MpiRuntime> process_runtime;
  std::lock_guard lock(mutex);
  if (process_runtime) return process_runtime;

  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    throw CommError("MPI was already finalized in this process; create every communicator before MPI_Finalize");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  int provided = MPI_THREAD_SINGLE;
  if (initialized) {
    MPI_Query_thread(&provided);
  } else {
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
    if (rc != MPI_SUCCESS) {
      throw CommError("MPI_Init_thread failed with code " + std::to_string(rc) +
                      "; run under mpirun, or check that Open MPI can start a singleton (orted on PATH)");
    }
  }
  process_runtime = std::shared_ptr<MpiRuntime>(new MpiRuntime(!initialized, provided, query_cuda_aware()));
  return process_runtime;
}

MpiRuntime::~MpiRuntime() {
  if (!owns_mpi_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace lethe::comm
