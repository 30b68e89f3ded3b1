// Times ingesting the 60,000 Fashion-MNIST training images into a Lethe dataset against merely
// decompressing the same gzip files, in the same run, and checks the ingested bytes (#wrong).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "storage/dataset.h"
#include "storage/gzip_input.h"
#include "storage/ingest_idx.h"

namespace fs = std::filesystem;
using namespace lethe::storage;

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Decompresses a whole file into `buffer` (reused across repetitions); returns its size.
size_t decompress(const fs::path& path, std::vector<uint8_t>& buffer) {
  GzipInput input(path);
  size_t size = 0;
  while (true) {
    if (buffer.size() < size + (1 << 20)) buffer.resize(size + (4 << 20));
    const size_t got = input.read_some(buffer.data() + size, buffer.size() - size);
    if (got == 0) break;
    size += got;
  }
  return size;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

void usage() {
  std::cout << "lethe_bench_ingest [--images FILE] [--labels FILE] [--repetitions N] [--out-dir DIR] [--json FILE]\n"
               "                   [--chunk-records N]\n"
               "Defaults: the Fashion-MNIST training files in " LETHE_FASHION_MNIST_DIR ", 5 repetitions,\n"
               "a fresh directory under the system temp directory, the ingest's default feature chunk.\n";
}

}  // namespace

int main(int argc, char** argv) {
  IdxSource source{fs::path(LETHE_FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz",
                   fs::path(LETHE_FASHION_MNIST_DIR) / "train-labels-idx1-ubyte.gz"};
  int repetitions = 5;
  fs::path out_dir = fs::temp_directory_path() / ("lethe_bench_ingest_" + std::to_string(::getpid()));
  std::string json_path;
  uint64_t chunk_records = 0;  // 0: the ingest's default
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "lethe_bench_ingest: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--images") source.images = value();
    else if (arg == "--labels") source.labels = value();
    else if (arg == "--repetitions") repetitions = std::max(1, std::stoi(value()));
    else if (arg == "--out-dir") out_dir = value();
    else if (arg == "--json") json_path = value();
    else if (arg == "--chunk-records") chunk_records = std::stoull(value());
    else if (arg == "--help" || arg == "-h") return usage(), 0;
    else {
      std::cerr << "lethe_bench_ingest: unknown argument '" << arg << "'\n";
      usage();
      return 2;
    }
  }
  try {
    fs::create_directories(out_dir);
    const fs::path out = out_dir / "bench.h5";
    std::vector<uint8_t> images, labels;
    size_t image_bytes = 0, label_bytes = 0;
    std::vector<double> decompress_s, ingest_s;
    uint64_t records = 0;
    std::printf("# ingest of %s + %s\n", source.images.c_str(), source.labels.c_str());
    std::printf("%5s %14s %12s %8s\n", "rep", "decompress_s", "ingest_s", "ratio");
    for (int rep = 0; rep < repetitions; ++rep) {
      auto start = std::chrono::steady_clock::now();
      image_bytes = decompress(source.images, images);
      label_bytes = decompress(source.labels, labels);
      decompress_s.push_back(seconds_since(start));

      fs::remove(out);
      IngestOptions options;
      options.out = out;
      options.seed = 1;
      options.public_fraction = 0.1;
      options.chunk_records = chunk_records;
      start = std::chrono::steady_clock::now();
      records = ingest_idx(source, options).records;
      ingest_s.push_back(seconds_since(start));
      std::printf("%5d %14.4f %12.4f %8.2f\n", rep, decompress_s.back(), ingest_s.back(),
                  ingest_s.back() / decompress_s.back());
    }

    // Correctness, outside the timed region: every record's features and label as decompressed.
    uint64_t wrong = 0, stored_chunk_records = 0;
    {
      const Dataset dataset = Dataset::open(out);
      stored_chunk_records = dataset.layout().chunk_records;
      const uint64_t record_bytes = dataset.layout().bytes_per_record();
      RecordStream stream = dataset.stream({}, 4096);
      RecordBatch batch;
      while (stream.next(batch))
        for (size_t i = 0; i < batch.size(); ++i) {
          const uint64_t row = batch.rows[i];
          const bool same = std::memcmp(batch.features.data() + i * record_bytes, images.data() + 16 + row * record_bytes,
                                        record_bytes) == 0 &&
                            batch.labels[i] == labels[8 + row];
          wrong += !same;
        }
      if (dataset.size() != records) wrong += records;
    }
    const double ratio = median(ingest_s) / median(decompress_s);
    std::printf("# records %llu, %llu per feature chunk, decompressed %.1f MB, file %.1f MB, #wrong %llu\n",
                static_cast<unsigned long long>(records), static_cast<unsigned long long>(stored_chunk_records), (image_bytes + label_bytes) / 1e6, fs::file_size(out) / 1e6,
                static_cast<unsigned long long>(wrong));
    std::printf("# median decompress %.4f s, median ingest %.4f s, ingest/decompress %.2fx (aim: <= 2x)\n",
                median(decompress_s), median(ingest_s), ratio);
    if (!json_path.empty()) {
      const nlohmann::json report = {{"benchmark", "ingest"},
                                     {"images", source.images.string()},
                                     {"labels", source.labels.string()},
                                     {"records", records},
                                     {"chunk_records", stored_chunk_records},
                                     {"repetitions", repetitions},
                                     {"decompress_seconds", decompress_s},
                                     {"ingest_seconds", ingest_s},
                                     {"median_decompress_seconds", median(decompress_s)},
                                     {"median_ingest_seconds", median(ingest_s)},
                                     {"ratio", ratio},
                                     {"wrong", wrong}};
      std::ofstream(json_path) << report.dump(2) << '\n';
    }
    fs::remove_all(out_dir);
    return wrong == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "lethe_bench_ingest: error: " << e.what() << '\n';
    return 1;
  }
}
