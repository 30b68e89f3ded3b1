// bench/comm/comm_benchmark.h — `lethe bench comm`: allreduce through the Communicator next to raw
// MPI_Allreduce on the same ranks and sizes, timed in interleaved rounds, checked for wrong results.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace lethe::bench {

struct CommBenchmarkOptions {
  std::size_t min_bytes = 4;
  std::size_t max_bytes = std::size_t{64} << 20;
  std::size_t size_factor = 4;  // each message size is this many times the previous one
  int rounds = 15;              // timed rounds per size and path; the median is reported
  comm::DataType type = comm::DataType::kFloat32;
  // "mpi" always runs next to raw MPI; "nccl" needs a GPU per rank. Empty: mpi, plus nccl where
  // this build has it and every rank of the node has a GPU of its own.
  std::vector<std::string> backends;
  std::string json_path;  // where rank 0 also writes the JSON report; empty for none
};

// One line of the table: one path (lethe-mpi, raw-mpi, lethe-nccl) at one message size.
struct CommBenchmarkRow {
  std::string path;
  std::size_t bytes = 0;
  std::size_t count = 0;
  double time_us = 0;       // median over rounds of the slowest rank's mean time per call
  double algbw_gbps = 0;    // bytes / time
  double busbw_gbps = 0;    // algbw * 2(n-1)/n, the allreduce bus bandwidth of nccl-tests
  std::size_t wrong = 0;    // elements wrong after one checked allreduce, summed over ranks
  double vs_raw_mpi = 0;    // time / raw MPI time at the same size; 0 where not compared
};

// Collective over MPI_COMM_WORLD: every rank must call it with the same options. Rank 0 writes
// the table to `table` (and the report to options.json_path); every rank returns the report.
[[nodiscard]] nlohmann::json run_comm_benchmark(const CommBenchmarkOptions& options, std::ostream& table);

}  // namespace lethe::bench
