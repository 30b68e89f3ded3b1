// The data subcommands of `lethe`: ingest (IDX or CSV into a dataset file), inspect, erase
// (by id or subject) and compact. Each prints JSON on stdout; see docs/DATA_FORMAT.md.
#include <spdlog/spdlog.h>

#include <charconv>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "launch/command_registry.h"
#include "storage/dataset.h"
#include "storage/durable_file.h"
#include "storage/erasure.h"
#include "storage/error.h"
#include "storage/ingest.h"
#include "storage/ingest_csv.h"
#include "storage/ingest_idx.h"
#include "storage/job_lock.h"
#include "trainer/job_manifest.h"

namespace lethe::launch {
namespace {

using nlohmann::json;
namespace storage = lethe::storage;

std::vector<uint64_t> parse_shape(const std::string& text) {
  std::vector<uint64_t> shape;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find('x', start), text.size());
    uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(text.data() + start, text.data() + end, value);
    if (ec != std::errc() || ptr != text.data() + end || value == 0)
      throw std::invalid_argument("--feature-shape '" + text + "' is not a shape like 28x28 (positive sizes joined by x)");
    shape.push_back(value);
    start = end + 1;
  }
  // Checked product: 2^32 x 2^32 must not wrap around to "0 values".
  storage::DatasetLayout layout;
  layout.feature_shape = shape;
  if (layout.values_per_record() > storage::kMaxValuesPerRecord)
    throw std::invalid_argument("--feature-shape '" + text + "' gives " +
                                (layout.values_per_record() == UINT64_MAX ? std::string("2^64 or more")
                                                                          : std::to_string(layout.values_per_record())) +
                                " values per record; at most " + std::to_string(storage::kMaxValuesPerRecord) +
                                " are allowed: give the shape of one record, e.g. 28x28");
  return shape;
}

json describe(const storage::Dataset& dataset) {
  std::map<int32_t, uint64_t> label_counts;
  for (uint64_t row = 0; row < dataset.size(); ++row)
    if (!dataset.is_tombstoned(row)) ++label_counts[dataset.label(row)];
  json labels = json::object();
  for (const auto& [label, count] : label_counts) labels[std::to_string(label)] = count;
  const auto& layout = dataset.layout();
  return {{"file", dataset.path().string()},
          {"format", std::string(storage::kDatasetFormat)},
          {"format_version", storage::kDatasetFormatVersion},
          {"records", dataset.size()},
          {"live", dataset.size() - dataset.tombstoned_count()},
          {"tombstoned", dataset.tombstoned_count()},
          {"public", dataset.public_count()},
          {"classes", label_counts.size()},
          {"label_counts", labels},
          {"subjects", dataset.subject_count()},
          {"feature_shape", layout.feature_shape},
          {"feature_type", std::string(storage::to_string(layout.feature_type))},
          {"seed", layout.seed},
          {"public_fraction", layout.public_fraction},
          {"chunk_records", layout.chunk_records},
          {"source", layout.source},
          {"uuid", layout.uuid},
          {"content_digest", dataset.content_digest()}};
}

// One JSON object per row, tombstoned rows included, in row order: what a tool needs to read a
// dataset without knowing its HDF5 layout. Features as hex of the stored bytes (native order).
void print_records(const storage::Dataset& dataset) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::size_t width = dataset.layout().bytes_per_record();
  constexpr std::uint64_t kBatch = 4096;
  std::vector<std::uint8_t> bytes;
  std::string out;
  for (std::uint64_t first = 0; first < dataset.size(); first += kBatch) {
    std::vector<std::uint64_t> rows;
    for (std::uint64_t row = first; row < std::min(dataset.size(), first + kBatch); ++row) rows.push_back(row);
    bytes.resize(rows.size() * width);
    dataset.read_features(rows, bytes);
    const auto labels = dataset.labels_of(rows);
    out.clear();
    for (std::size_t i = 0; i < rows.size(); ++i) {
      std::string hex(2 * width, '0');
      for (std::size_t b = 0; b < width; ++b) {
        hex[2 * b] = kHex[bytes[i * width + b] >> 4];
        hex[2 * b + 1] = kHex[bytes[i * width + b] & 0xf];
      }
      out += json{{"row", rows[i]},
                  {"id", dataset.id(rows[i])},
                  {"subject", dataset.subject(rows[i])},
                  {"label", labels[i]},
                  {"public", dataset.is_public(rows[i])},
                  {"tombstoned", dataset.is_tombstoned(rows[i])},
                  {"features", hex}}
                 .dump();
      out += '\n';
    }
    std::cout << out;
  }
  std::cout << std::flush;
}

void print(const json& value) { std::cout << value.dump(2) << '\n'; }

struct IngestArguments {
  std::string format;
  std::string images, labels, csv;
  std::string label_column = "label", id_column, subject_column;
  std::string feature_type = "float32", feature_shape;
  std::string out, subjects, id_prefix;
  uint64_t seed = 0;
  double public_fraction = 0.0;
  uint64_t chunk_records = 0;
  bool force = false;
};

void install_ingest(CLI::App& app) {
  auto args = std::make_shared<IngestArguments>();
  CLI::App* cmd = app.add_subcommand("ingest", "Ingest IDX or CSV records into a Lethe dataset file (HDF5)");
  cmd->add_option("--format", args->format, "Input format: idx or csv")->required()->check(CLI::IsMember({"idx", "csv"}));
  cmd->add_option("--out", args->out,
                  "Dataset file to write (committed atomically; FILE.tmp while writing). An existing file is refused "
                  "unless --force; links, devices and directories are always refused")
      ->required();
  cmd->add_flag("--force", args->force, "Replace an existing dataset file at --out (atomically, once the new one is complete)");
  cmd->add_option("--images", args->images, "idx: images file (e.g. train-images-idx3-ubyte.gz)");
  cmd->add_option("--labels", args->labels, "idx: labels file (e.g. train-labels-idx1-ubyte.gz)");
  cmd->add_option("--csv", args->csv, "csv: input file with a header line (plain or .gz)");
  cmd->add_option("--label-column", args->label_column, "csv: column of integer labels")->capture_default_str();
  cmd->add_option("--id-column", args->id_column, "csv: column of record ids (default: generated ids)");
  cmd->add_option("--subject-column", args->subject_column, "csv: column of subjects (default: none)");
  cmd->add_option("--feature-type", args->feature_type, "csv: uint8 or float32")
      ->check(CLI::IsMember({"uint8", "float32"}))
      ->capture_default_str();
  cmd->add_option("--feature-shape", args->feature_shape, "csv: record shape such as 28x28 (default: flat)");
  cmd->add_option("--subjects", args->subjects, "CSV mapping file with columns id,subject (any format)");
  cmd->add_option("--id-prefix", args->id_prefix,
                  "Prefix of generated ids PREFIX-INDEX (default: the input file name up to its first - or .)");
  cmd->add_option("--seed", args->seed, "Dataset seed: keys the shard, slice and public assignment")->capture_default_str();
  cmd->add_option("--public-fraction", args->public_fraction,
                  "Fraction of records flagged public (chosen by keyed hash of the id), for backbone pretraining")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--chunk-records", args->chunk_records, "Records per HDF5 feature chunk (default: about 256 KiB)");
  cmd->footer(
      "Examples:\n"
      "  lethe ingest --format idx --images /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \\\n"
      "               --labels /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz \\\n"
      "               --out train.h5 --seed 7 --public-fraction 0.1 --subjects owners.csv\n"
      "  lethe ingest --format csv --csv records.csv --id-column id --subject-column user \\\n"
      "               --feature-type uint8 --feature-shape 28x28 --out records.h5\n"
      "Prints a JSON summary of the new dataset on stdout.");
  cmd->callback([args] {
    storage::check_output_path(args->out, args->force ? storage::ExistingOutput::kReplace : storage::ExistingOutput::kRefuse,
                               "--force");
    storage::IngestOptions options;
    options.out = args->out;
    options.seed = args->seed;
    options.public_fraction = args->public_fraction;
    if (!args->subjects.empty()) options.subject_mapping = args->subjects;
    options.id_prefix = args->id_prefix;
    options.chunk_records = args->chunk_records;
    storage::IngestReport report;
    if (args->format == "idx") {
      if (args->images.empty() || args->labels.empty())
        throw std::invalid_argument("ingest --format idx needs --images FILE and --labels FILE");
      spdlog::info("ingesting IDX {} + {} into {}", args->images, args->labels, args->out);
      report = storage::ingest_idx({args->images, args->labels}, options);
    } else {
      if (args->csv.empty()) throw std::invalid_argument("ingest --format csv needs --csv FILE");
      storage::CsvSource source;
      source.file = args->csv;
      source.label_column = args->label_column;
      source.id_column = args->id_column;
      source.subject_column = args->subject_column;
      source.feature_type = storage::parse_feature_type(args->feature_type);
      if (!args->feature_shape.empty()) source.feature_shape = parse_shape(args->feature_shape);
      spdlog::info("ingesting CSV {} into {}", args->csv, args->out);
      report = storage::ingest_csv(source, options);
    }
    json summary = describe(storage::Dataset::open(report.file));
    summary["records_with_subject"] = report.records_with_subject;
    if (options.subject_mapping) {
      summary["subject_mapping"] = {{"file", options.subject_mapping->string()},
                                    {"entries", report.mapping_entries},
                                    {"unmatched", report.mapping_unmatched}};
      if (report.mapping_unmatched > 0)
        spdlog::warn("{} ids of the subject mapping {} matched no ingested record", report.mapping_unmatched,
                     options.subject_mapping->string());
    }
    print(summary);
  });
}

void install_inspect(CLI::App& app) {
  auto file = std::make_shared<std::string>();
  auto ids = std::make_shared<std::string>();
  auto records = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("inspect", "Print a JSON summary of a Lethe dataset file (or its record ids)");
  cmd->add_option("file", *file, "Dataset file")->required();
  cmd->add_option("--ids", *ids, "Print record ids instead, one per line: live, private (live, not public) or all")
      ->check(CLI::IsMember({"live", "private", "all"}));
  cmd->add_flag("--records", *records,
                "Print every row instead, one JSON object per line: row, id, subject, label, public, tombstoned, "
                "features (hex of the stored bytes)")
      ->excludes("--ids");
  cmd->footer(
      "Examples:\n  lethe inspect train.h5\n  lethe inspect train.h5 --ids private > deletable.txt\n"
      "  lethe inspect train.h5 --records | head -1\n"
      "Prints records (rows, tombstoned included), live, tombstoned, public (live), classes, label_counts,\n"
      "subjects, feature_shape, feature_type, seed, uuid, content_digest and more.");
  cmd->callback([file, ids, records] {
    const auto dataset = storage::Dataset::open(*file);
    if (*records) {
      print_records(dataset);
      return;
    }
    if (ids->empty()) {
      print(describe(dataset));
      return;
    }
    storage::RecordFilter filter;
    if (*ids == "all") filter.include_tombstoned = true;
    if (*ids == "private") filter.public_records = storage::PublicRecords::exclude;
    std::string out;
    for (const auto row : dataset.select(filter)) {
      out += dataset.id(row);
      out += '\n';
    }
    std::cout << out << std::flush;
  });
}

struct EraseArguments {
  std::string data;
  std::vector<std::string> ids;
  std::string subject;
  bool allow_public = false;
};

// `lethe erase` and `lethe compact` change a dataset outside any job. Refused for the dataset of a
// job that still exists: its models would keep records the file no longer holds, and a later deletion
// would find them "already erased" and touch no model. Also refused while a job's writer holds the
// file (storage/job_lock.h). Returns the lock to hold while editing.
std::unique_ptr<storage::DatasetLock> lock_for_direct_edit(const std::string& data, std::string_view command) {
  const auto real = storage::resolve_data_file(data);
  auto lock = std::make_unique<storage::DatasetLock>(real, storage::DatasetLock::Mode::kDirectEdit);
  const auto uuid = storage::Dataset::open(real).uuid();
  for (const auto& job : storage::dataset_jobs(real)) {
    if (!std::filesystem::exists(trainer::job_manifest_path(job))) continue;  // retired: its directory is gone
    std::string why;
    try {
      if (trainer::read_job_manifest(job).dataset.uuid != uuid) continue;  // the job trains on another copy
      why = "it is the dataset of job " + job.string();
    } catch (const std::exception& e) {
      why = "job " + job.string() + " names it and its manifest cannot be read (" + e.what() + ")";
    }
    throw lethe::storage::StorageError(
        lethe::storage::StorageErrorKind::kRefused,
        "refusing to " + std::string(command) + " " + real.string() + ": " + why + ", and the job's models would keep " +
            "what the file no longer holds. Delete records through the job (`lethe delete --job " + job.string() +
            " --record ID`, or POST /v1/deletions to its service): every model forgets them, then their bytes are "
            "erased. If the job is retired, remove its directory first. Nothing was changed");
  }
  return lock;
}

void install_erase(CLI::App& app) {
  auto args = std::make_shared<EraseArguments>();
  CLI::App* cmd = app.add_subcommand(
      "erase", "Erase records from a dataset file: overwrite their features in place, clear their subject, tombstone them");
  cmd->add_option("--data", args->data, "Dataset file")->required();
  auto* ids = cmd->add_option("--id", args->ids, "Id of a record to erase (repeatable)");
  auto* subject = cmd->add_option("--subject", args->subject, "Erase every live record of this subject");
  ids->excludes(subject);
  subject->excludes(ids);
  cmd->add_flag("--allow-public", args->allow_public,
                "Also erase public records (they pretrained the backbone: retrain it fully afterwards)");
  cmd->footer(
      "Examples:\n  lethe erase --data train.h5 --id train-17 --id train-42\n"
      "  lethe erase --data train.h5 --subject alice\n"
      "Unknown ids fail the whole command and change nothing. Run `lethe compact` afterwards to drop the rows.");
  cmd->callback([args] {
    if (args->ids.empty() && args->subject.empty()) throw std::invalid_argument("erase needs --id ID or --subject S");
    const auto lock = lock_for_direct_edit(args->data, "erase records of");
    const storage::ErasureOptions options{args->allow_public};
    const storage::ErasureReport report = args->subject.empty()
                                              ? storage::erase_records(args->data, args->ids, options)
                                              : storage::erase_subject(args->data, args->subject, options);
    json out = {{"file", report.file.string()},
                {"erased", report.erased},
                {"already_erased", report.already_erased},
                {"feature_bytes_overwritten", report.feature_bytes_overwritten}};
    if (!args->subject.empty()) out["subject"] = args->subject;
    print(out);
  });
}

void install_compact(CLI::App& app) {
  auto data = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand("compact", "Rewrite a dataset file without its tombstoned (erased) rows");
  cmd->add_option("--data", *data, "Dataset file")->required();
  cmd->footer("Example:\n  lethe compact --data train.h5\nThe file is replaced atomically (FILE.tmp, fsync, rename).");
  cmd->callback([data] {
    const auto lock = lock_for_direct_edit(*data, "compact");
    const storage::CompactionReport report = storage::compact(*data);
    print({{"file", report.file.string()},
           {"rows_before", report.rows_before},
           {"rows_after", report.rows_after},
           {"removed", report.removed}});
  });
}

void install(CLI::App& app) {
  install_ingest(app);
  install_inspect(app);
  install_erase(app);
  install_compact(app);
}

}  // namespace

const CommandRegistration registration{10, install};

}  // namespace lethe::launch
