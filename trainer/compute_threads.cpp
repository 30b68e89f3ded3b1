#include "trainer/compute_threads.h"

#include <dlfcn.h>
#include <torch/torch.h>

namespace lethe::trainer {

namespace {

// OpenBLAS's C API, looked up at run time: libtorch links the generic libblas.so.3, which the
// system's alternatives resolve to OpenBLAS or to the reference BLAS.
template <typename Function>
Function* blas_symbol(const char* name) {
  return reinterpret_cast<Function*>(::dlsym(RTLD_DEFAULT, name));
}

}  // namespace

void set_compute_threads(int threads) {
  torch::set_num_threads(threads);
  if (auto* set = blas_symbol<void(int)>("openblas_set_num_threads")) set(threads);
}

std::string blas_name() {
  if (auto* config = blas_symbol<char*()>("openblas_get_config")) return std::string("openblas (") + config() + ")";
  return "reference or unknown";
}

}  // namespace lethe::trainer
