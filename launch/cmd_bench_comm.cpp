// `lethe bench comm`: the Communicator's allreduce against raw MPI_Allreduce on the same ranks,
// as a table on stdout (rank 0) and optionally JSON; run it as `mpirun -np N lethe bench comm`.
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

#include "bench/comm/comm_benchmark.h"
#include "launch/command_registry.h"
#include "launch/logging.h"

namespace lethe::launch {
namespace {

struct BenchCommArguments {
  std::string backend = "auto";
  std::string type = "float32";
  bench::CommBenchmarkOptions options;
};

comm::DataType parse_type(const std::string& name) {
  for (auto type : {comm::DataType::kUInt8, comm::DataType::kInt32, comm::DataType::kInt64, comm::DataType::kFloat32,
                    comm::DataType::kFloat64}) {
    if (comm::to_string(type) == name) return type;
  }
  throw std::invalid_argument("--type '" + name + "' is not one of uint8, int32, int64, float32, float64");
}

void run(BenchCommArguments& arguments) {
  arguments.options.type = parse_type(arguments.type);
  if (arguments.backend == "auto") {
    arguments.options.backends.clear();
  } else if (arguments.backend == "mpi") {
    arguments.options.backends = {"mpi"};
  } else if (arguments.backend == "nccl") {
    arguments.options.backends = {"mpi", "nccl"};  // raw MPI stays the reference
  } else {
    throw std::invalid_argument("--backend '" + arguments.backend + "' is not auto, mpi or nccl");
  }
  // --json -: the JSON report is the machine-readable output, so it alone goes to stdout.
  const bool json_to_stdout = arguments.options.json_path == "-";
  if (json_to_stdout) arguments.options.json_path.clear();
  const auto report = bench::run_comm_benchmark(arguments.options, json_to_stdout ? std::cerr : std::cout);
  if (json_to_stdout && launcher_rank() == 0) std::cout << report.dump(2) << std::endl;
}

void install(CLI::App& app) {
  CLI::App& bench_group = subcommand_group(app, "bench", "Benchmarks; results and commands in docs/BENCHMARKS.md");
  auto arguments = std::make_shared<BenchCommArguments>();
  CLI::App* command = bench_group.add_subcommand(
      "comm", "Allreduce through the Communicator next to raw MPI_Allreduce (run under mpirun -np N)");
  command->footer(
      "Examples:\n  mpirun -np 2 lethe bench comm --json comm.json        # table on stdout, JSON in comm.json\n"
      "  mpirun -np 4 lethe bench comm --backend nccl --min-bytes 1024 --max-bytes 268435456\n"
      "  mpirun -np 2 lethe bench comm --json - | jq .wrong_total   # JSON on stdout, the table on stderr\n"
      "Columns as in nccl-tests: time (us), algbw and busbw (GB/s), #wrong (checked elements), vs raw MPI.");
  command->add_option("--json", arguments->options.json_path,
                      "Also write the results as JSON to this file (rank 0); '-': JSON on stdout, the table on stderr");
  command->add_option("--backend", arguments->backend, "auto (mpi, plus nccl where each rank has a GPU), mpi or nccl");
  command->add_option("--type", arguments->type, "Element type: uint8, int32, int64, float32 or float64");
  command->add_option("--min-bytes", arguments->options.min_bytes, "Smallest message, in bytes");
  command->add_option("--max-bytes", arguments->options.max_bytes, "Largest message, in bytes");
  command->add_option("--size-factor", arguments->options.size_factor, "Each message size is this times the last");
  command->add_option("--rounds", arguments->options.rounds, "Timed rounds per size and path (median reported)");
  command->callback([arguments] { run(*arguments); });
}

const CommandRegistration registration{90, install};

}  // namespace
}  // namespace lethe::launch
