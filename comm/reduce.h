// comm/reduce.h — element-wise reductions on typed host buffers, shared by the backends that
// reduce on the CPU themselves (in-process) or finish an average after a sum (MPI, staging).
#pragma once

#include <cstddef>

#include "comm/communicator.h"

namespace lethe::comm {

// accumulator[i] = accumulator[i] (op) input[i]; kAverage accumulates a sum.
void reduce_into(void* accumulator, const void* input, std::size_t count, DataType type, ReduceOp op);

// values[i] /= divisor; integers are divided with truncation toward zero.
void divide_in_place(void* values, std::size_t count, DataType type, int divisor);

}  // namespace lethe::comm
