// comm/mpi_runtime.h — owns MPI_Init_thread and MPI_Finalize for the process: the first user
// initializes MPI (singleton init, so one process needs no mpirun) and the last owner finalizes.
#pragma once

#include <memory>

namespace lethe::comm {

class MpiRuntime {
 public:
  // The process's runtime, initializing MPI on first use with MPI_THREAD_SERIALIZED (one thread
  // at a time calls MPI, DESIGN.md §5). If someone else initialized MPI, it is left to them to
  // finalize. Throws CommError if MPI was already finalized or fails to start.
  [[nodiscard]] static std::shared_ptr<MpiRuntime> acquire();

  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;
  ~MpiRuntime();

  // The thread support MPI provided (MPI_THREAD_SINGLE ... MPI_THREAD_MULTIPLE).
  [[nodiscard]] int thread_level() const { return thread_level_; }
  // Whether MPI can read CUDA device memory directly; Debian's and Ubuntu's Open MPI cannot.
  [[nodiscard]] bool cuda_aware() const { return cuda_aware_; }

 private:
  MpiRuntime(bool owns_mpi, int thread_level, bool cuda_aware)
      : owns_mpi_(owns_mpi), thread_level_(thread_level), cuda_aware_(cuda_aware) {}

  bool owns_mpi_;
  int thread_level_;
  bool cuda_aware_;
};

}  // namespace lethe::comm
