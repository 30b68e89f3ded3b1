// trainer/compute_threads.h — how many threads one rank computes with: torch's intra-op threads and
// the BLAS's own (OpenBLAS starts one per core unless told), both held to the job's `threads`, so
// that ranks sharing a machine do not oversubscribe it and timings do not depend on its size.
#pragma once

#include <string>

namespace lethe::trainer {

// Sets torch's intra-op threads and, when libtorch runs on OpenBLAS, OpenBLAS's threads.
void set_compute_threads(int threads);

// The BLAS libtorch's matrix products run on, for reports: "openblas (<its config>)", or
// "reference or unknown" when no optimized BLAS answers (Debian's libblas.so.3 then resolves to
// the reference BLAS, about ten times slower: install libopenblas0-pthread).
[[nodiscard]] std::string blas_name();

}  // namespace lethe::trainer
