#include "bench/comm/comm_benchmark.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <thread>

#include "comm/cuda.h"
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"

namespace lethe::bench {
namespace {

using comm::BufferView;
using comm::Communicator;
using comm::DataType;
using comm::MemoryKind;

// Writes element i of a rank's input, (i % 7) + rank, in `type`: sums stay exact in every type.
void fill_pattern(std::vector<std::byte>& bytes, std::size_t count, DataType type, int rank) {
  for (std::size_t i = 0; i < count; ++i) {
    const auto value = static_cast<std::int64_t>(i % 7 + rank);
    switch (type) {
      case DataType::kUInt8: reinterpret_cast<std::uint8_t*>(bytes.data())[i] = static_cast<std::uint8_t>(value); break;
      case DataType::kInt32: reinterpret_cast<std::int32_t*>(bytes.data())[i] = static_cast<std::int32_t>(value); break;
      case DataType::kInt64: reinterpret_cast<std::int64_t*>(bytes.data())[i] = value; break;
      case DataType::kFloat32: reinterpret_cast<float*>(bytes.data())[i] = static_cast<float>(value); break;
      case DataType::kFloat64: reinterpret_cast<double*>(bytes.data())[i] = static_cast<double>(value); break;
    }
  }
}

// Elements that differ from the sum of every rank's pattern.
std::size_t count_wrong(const std::vector<std::byte>& bytes, std::size_t count, DataType type, int ranks) {
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const auto want = static_cast<std::int64_t>(ranks * (i % 7) + ranks * (ranks - 1) / 2);
    double got = 0;
    switch (type) {
      case DataType::kUInt8:
        got = reinterpret_cast<const std::uint8_t*>(bytes.data())[i];
        if (static_cast<std::int64_t>(got) != (want & 0xff)) ++wrong;
        continue;
      case DataType::kInt32: got = reinterpret_cast<const std::int32_t*>(bytes.data())[i]; break;
      case DataType::kInt64: got = static_cast<double>(reinterpret_cast<const std::int64_t*>(bytes.data())[i]); break;
      case DataType::kFloat32: got = reinterpret_cast<const float*>(bytes.data())[i]; break;
      case DataType::kFloat64: got = reinterpret_cast<const double*>(bytes.data())[i]; break;
    }
    if (got != static_cast<double>(want)) ++wrong;
  }
  return wrong;
}

// A message buffer in host or device memory, with the host copy used to fill and check it.
class Message {
 public:
  Message(std::size_t count, DataType type, MemoryKind memory)
      : count_(count), type_(type), memory_(memory), host_(count * comm::element_size(type)) {
    if (memory_ == MemoryKind::kCuda) device_ = comm::cuda_allocate(host_.size());
  }
  Message(const Message&) = delete;
  Message& operator=(const Message&) = delete;
  ~Message() {
    if (device_ != nullptr) comm::cuda_free(device_);
  }
  [[nodiscard]] BufferView view() {
    return BufferView{device_ != nullptr ? device_ : host_.data(), count_, type_, memory_};
  }
  void load_pattern(int rank) {
    fill_pattern(host_, count_, type_, rank);
    if (device_ != nullptr) comm::cuda_copy(device_, host_.data(), host_.size());
  }
  [[nodiscard]] std::size_t wrong(int ranks) {
    if (device_ != nullptr) comm::cuda_copy(host_.data(), device_, host_.size());
    return count_wrong(host_, count_, type_, ranks);
  }

 private:
  std::size_t count_;
  DataType type_;
  MemoryKind memory_;
  std::vector<std::byte> host_;
  void* device_ = nullptr;
};

// One way of running an allreduce, timed and checked the same way as the others.
struct Path {
  std::string name;
  MemoryKind memory;
  std::function<void(BufferView)> allreduce;
  bool compared_to_raw;  // whose time is divided by raw MPI's
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

std::string format_row(const CommBenchmarkRow& row, std::string_view type) {
  char line[256];
  char ratio[16] = "-";
  if (row.vs_raw_mpi > 0) std::snprintf(ratio, sizeof(ratio), "%.3f", row.vs_raw_mpi);
  std::snprintf(line, sizeof(line), "%12zu %12zu %8.*s %-11s %11.2f %8.3f %8.3f %7zu %7s\n", row.bytes, row.count,
                static_cast<int>(type.size()), type.data(), row.path.c_str(), row.time_us, row.algbw_gbps,
                row.busbw_gbps, row.wrong, ratio);
  return line;
}

}  // namespace

nlohmann::json run_comm_benchmark(const CommBenchmarkOptions& options, std::ostream& table) {
  if (options.min_bytes == 0 || options.max_bytes < options.min_bytes) {
    throw std::invalid_argument("bench comm: need 0 < --min-bytes <= --max-bytes, got " +
                                std::to_string(options.min_bytes) + " and " + std::to_string(options.max_bytes));
  }
  if (options.size_factor < 2) throw std::invalid_argument("bench comm: --size-factor must be at least 2");
  if (options.rounds < 1) throw std::invalid_argument("bench comm: --rounds must be at least 1");

  auto world = comm::MpiCommunicator::world();
  const int rank = world->rank();
  const int ranks = world->size();
  const MPI_Comm raw = world->handle();
  const std::size_t element = comm::element_size(options.type);

  std::vector<std::string> backends = options.backends;
  if (backends.empty()) {
    backends = {"mpi"};
    const int gpus = comm::cuda_device_count();
    if (comm::nccl_built() && gpus > 0 && (gpus >= world->local_size() || world->local_size() == 1)) {
      backends.push_back("nccl");
    }
  }
  std::vector<Path> paths;
  std::unique_ptr<Communicator> nccl;
  for (const std::string& backend : backends) {
    if (backend == "mpi") {
      paths.push_back({"lethe-mpi", MemoryKind::kHost,
                       [&](BufferView buffer) { world->allreduce(buffer, comm::ReduceOp::kSum); }, true});
      paths.push_back({"raw-mpi", MemoryKind::kHost,
                       [&](BufferView buffer) {
                         if (MPI_Allreduce(MPI_IN_PLACE, buffer.data, static_cast<int>(buffer.count),
                                           comm::mpi_datatype(buffer.type), MPI_SUM, raw) != MPI_SUCCESS) {
                           throw comm::CommError("rank " + std::to_string(rank) + ": raw MPI_Allreduce failed");
                         }
                       },
                       false});
    } else if (backend == "nccl") {
      nccl = comm::make_communicator("nccl");
      paths.push_back({"lethe-nccl", MemoryKind::kCuda,
                       [&](BufferView buffer) { nccl->allreduce(buffer, comm::ReduceOp::kSum); }, false});
    } else {
      throw std::invalid_argument("bench comm: unknown backend '" + backend + "'; choose mpi or nccl");
    }
  }

  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const std::string type_name(comm::to_string(options.type));
  if (rank == 0) {
    table << "# lethe bench comm: allreduce (sum) of " << type_name << ", " << ranks << " ranks on " << host << " ("
          << std::thread::hardware_concurrency() << " cores), " << options.rounds
          << " interleaved rounds per size, median of the slowest rank's time per call\n"
          << "# busbw = algbw * 2(n-1)/n; #wrong: elements wrong after a checked allreduce, all ranks; vs raw: time "
             "/ raw MPI_Allreduce time\n#\n"
          << "#       size        count     type path               time    algbw    busbw  #wrong  vs raw\n"
          << "#        (B)   (elements)                            (us)   (GB/s)   (GB/s)\n";
    table.flush();
  }

  std::vector<CommBenchmarkRow> rows;
  for (std::size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= options.size_factor) {
    const std::size_t count = std::max<std::size_t>(1, bytes / element);
    // Enough calls per round to time a few MiB, at least one.
    const int calls = static_cast<int>(std::clamp<std::size_t>((std::size_t{4} << 20) / (count * element), 1, 1000));
    std::vector<std::unique_ptr<Message>> messages;
    for (const Path& path : paths) messages.push_back(std::make_unique<Message>(count, options.type, path.memory));
    std::vector<std::vector<double>> seconds(paths.size());

    // Round 0 warms up (connections, page faults) and is not counted. Paths alternate their
    // order from round to round, so that neither always runs on a warmer machine.
    for (int round = 0; round <= options.rounds; ++round) {
      for (std::size_t k = 0; k < paths.size(); ++k) {
        const std::size_t p = round % 2 == 0 ? k : paths.size() - 1 - k;
        messages[p]->load_pattern(rank);
        const BufferView view = messages[p]->view();
        MPI_Barrier(raw);
        const double start = MPI_Wtime();
        for (int call = 0; call < calls; ++call) paths[p].allreduce(view);
        double elapsed = (MPI_Wtime() - start) / calls;
        MPI_Allreduce(MPI_IN_PLACE, &elapsed, 1, MPI_DOUBLE, MPI_MAX, raw);
        if (round > 0) seconds[p].push_back(elapsed);
      }
    }

    double raw_time = 0;
    const std::size_t first_row = rows.size();
    for (std::size_t p = 0; p < paths.size(); ++p) {
      messages[p]->load_pattern(rank);
      paths[p].allreduce(messages[p]->view());
      std::uint64_t wrong = messages[p]->wrong(ranks);
      MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_UINT64_T, MPI_SUM, raw);
      CommBenchmarkRow row;
      row.path = paths[p].name;
      row.bytes = count * element;
      row.count = count;
      row.time_us = median(seconds[p]) * 1e6;
      row.algbw_gbps = static_cast<double>(row.bytes) / (row.time_us * 1e-6) / 1e9;
      row.busbw_gbps = row.algbw_gbps * 2.0 * (ranks - 1) / ranks;
      row.wrong = wrong;
      if (paths[p].name == "raw-mpi") raw_time = row.time_us;
      rows.push_back(row);
    }
    for (std::size_t p = 0; p < paths.size(); ++p) {
      if (paths[p].compared_to_raw && raw_time > 0) rows[first_row + p].vs_raw_mpi = rows[first_row + p].time_us / raw_time;
      if (rank == 0) table << format_row(rows[first_row + p], type_name);
    }
    if (rank == 0) table.flush();
  }

  nlohmann::json report;
  report["benchmark"] = "comm";
  report["collective"] = "allreduce";
  report["op"] = "sum";
  report["type"] = type_name;
  report["ranks"] = ranks;
  report["rounds"] = options.rounds;
  report["host"] = host;
  report["cores"] = std::thread::hardware_concurrency();
  report["rows"] = nlohmann::json::array();
  double worst_at_1mib = 0;
  std::size_t wrong_total = 0;
  for (const CommBenchmarkRow& row : rows) {
    nlohmann::json entry = {{"path", row.path},          {"bytes", row.bytes},
                            {"count", row.count},        {"time_us", row.time_us},
                            {"algbw_gbps", row.algbw_gbps}, {"busbw_gbps", row.busbw_gbps},
                            {"wrong", row.wrong}};
    if (row.vs_raw_mpi > 0) entry["vs_raw_mpi"] = row.vs_raw_mpi;
    report["rows"].push_back(entry);
    wrong_total += row.wrong;
    if (row.vs_raw_mpi > 0 && row.bytes >= (std::size_t{1} << 20)) worst_at_1mib = std::max(worst_at_1mib, row.vs_raw_mpi);
  }
  report["wrong_total"] = wrong_total;
  if (worst_at_1mib > 0) report["worst_vs_raw_mpi_at_1mib_or_more"] = worst_at_1mib;
  if (rank == 0) {
    table << "# #wrong in total: " << wrong_total;
    if (worst_at_1mib > 0) table << "; worst lethe-mpi / raw-mpi at >= 1 MiB: " << worst_at_1mib;
    table << "\n";
    if (!options.json_path.empty()) {
      std::ofstream out(options.json_path);
      out << report.dump(2) << '\n';
      if (!out) throw std::runtime_error("bench comm: could not write the JSON report to '" + options.json_path + "'");
    }
  }
  return report;
}

}  // namespace lethe::bench
