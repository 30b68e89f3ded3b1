#include "storage/ingest_csv.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <numeric>

#include "storage/csv_reader.h"
#include "storage/error.h"
#include "storage/progress.h"
#include "storage/record_id.h"

namespace lethe::storage {
namespace {

std::string_view trimmed(std::string_view text) {
  const size_t first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

std::string column_name(const std::vector<std::string>& header, size_t column) {
  return "column " + std::to_string(column + 1) + " ('" + header[column] + "')";
}

template <typename T>
T parse_number(std::string_view field, const CsvReader& csv, const std::vector<std::string>& header, size_t column,
               const char* expected) {
  const std::string_view text = trimmed(field);
  T value{};
  const char* first = text.data();
  if (!text.empty() && text.front() == '+') ++first;
  const auto [end, ec] = std::from_chars(first, text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw StorageError(csv.where() + ", " + column_name(header, column) + ": '" + std::string(field) + "' is not " +
                       expected);
  return value;
}

// A field that must be a record id or subject (storage/record_id.h): refused naming line and column.
void check_id_field(std::string_view text, const char* what, const CsvReader& csv,
                    const std::vector<std::string>& header, size_t column) {
  if (record_id_problem(text)) validate_record_id(text, what, csv.where() + ", " + column_name(header, column));
}

// The line of the `row`-th record (0-based) of `file`: read again, only for an error message, so that
// ingest keeps no per-record line numbers.
uint64_t line_of_row(const std::filesystem::path& file, uint64_t row) {
  CsvReader csv(file);
  std::vector<std::string_view> fields;
  for (uint64_t r = 0; r <= row + 1; ++r)  // + 1: the header
    if (!csv.next(fields)) break;
  return csv.line();
}

}  // namespace

IngestReport ingest_csv(const CsvSource& source, const IngestOptions& options) {
  CsvReader csv(source.file);
  std::vector<std::string_view> fields;
  if (!csv.next(fields))
    throw StorageError("'" + source.file.string() + "' is empty: a CSV dataset needs a header line naming its columns");
  const std::vector<std::string> header(fields.begin(), fields.end());
  const auto locate = [&](const std::string& name, const char* option) {
    if (name.empty()) return -1;
    const int column = find_column(header, name);
    if (column < 0) {
      std::string names;
      for (const auto& h : header) names += (names.empty() ? "" : ", ") + h;
      throw StorageError("'" + source.file.string() + "' has no column '" + name + "' (named by " + option +
                         "); its header (line " + std::to_string(csv.line()) + ") has: " + names);
    }
    return column;
  };
  const int label_column = locate(source.label_column, "--label-column");
  const int id_column = locate(source.id_column, "--id-column");
  const int subject_column = locate(source.subject_column, "--subject-column");
  if (subject_column >= 0 && options.subject_mapping)
    throw StorageError("'" + source.file.string() + "' has a subject column ('" + source.subject_column +
                       "') and a subject mapping file was given too: use one of them");
  std::vector<size_t> feature_columns;
  for (size_t c = 0; c < header.size(); ++c)
    if (static_cast<int>(c) != label_column && static_cast<int>(c) != id_column && static_cast<int>(c) != subject_column)
      feature_columns.push_back(c);
  if (feature_columns.empty())
    throw StorageError("'" + source.file.string() + "' has no feature columns: every column besides label, id and "
                       "subject is a feature");

  DatasetLayout layout;
  layout.feature_type = source.feature_type;
  layout.feature_shape = source.feature_shape.empty() ? std::vector<uint64_t>{feature_columns.size()} : source.feature_shape;
  if (layout.values_per_record() != feature_columns.size())
    throw std::invalid_argument("the feature shape holds " + std::to_string(layout.values_per_record()) +
                                " values but '" + source.file.string() + "' has " +
                                std::to_string(feature_columns.size()) + " feature columns");
  layout.source = "csv " + source.file.string();
  IngestSink sink(options, layout);

  const std::string prefix = (options.id_prefix.empty() ? default_id_prefix(source.file) : options.id_prefix) + "-";
  std::vector<uint8_t> features(layout.bytes_per_record());
  std::string id;
  uint64_t index = 0;
  ProgressTask progress("ingest", 0, "records");  // the line count is not known up front
  while (csv.next(fields)) {
    progress.advance(1);
    if (fields.size() != header.size())
      throw StorageError(csv.where() + " has " + std::to_string(fields.size()) + " fields but the header (line 1) has " +
                         std::to_string(header.size()) + ": every row needs one value per column");
    const auto label = parse_number<int32_t>(fields[label_column], csv, header, label_column, "an integer label");
    for (size_t k = 0; k < feature_columns.size(); ++k) {
      const size_t column = feature_columns[k];
      if (source.feature_type == FeatureType::uint8) {
        const auto value = parse_number<int>(fields[column], csv, header, column, "an integer (uint8 features)");
        if (value < 0 || value > 255)
          throw StorageError(csv.where() + ", " + column_name(header, column) + ": " + std::to_string(value) +
                             " is outside 0..255; ingest with --feature-type float32 to keep it");
        features[k] = static_cast<uint8_t>(value);
      } else {
        const auto value = parse_number<float>(fields[column], csv, header, column, "a number");
        if (!std::isfinite(value))
          throw StorageError(csv.where() + ", " + column_name(header, column) + ": '" + std::string(fields[column]) +
                             "' is not a finite number");
        std::memcpy(features.data() + 4 * k, &value, 4);
      }
    }
    if (id_column >= 0) {
      id = trimmed(fields[id_column]);
      check_id_field(id, "the id", csv, header, id_column);
    } else {
      id = prefix + std::to_string(index);
      if (record_id_problem(id)) validate_record_id(id, "the generated id (--id-prefix)", csv.where());
    }
    // The writer's index finds duplicates (no second map of ids here); the first line is found again.
    if (const auto first = sink.row_of(id))
      throw StorageError("'" + source.file.string() + "' has the id '" + printable_id(id) + "' twice, on lines " +
                         std::to_string(line_of_row(source.file, *first)) + " and " + std::to_string(csv.line()) +
                         ": ids must be unique");
    const std::string_view subject = subject_column >= 0 ? trimmed(fields[subject_column]) : std::string_view{};
    if (!subject.empty()) check_id_field(subject, "the subject", csv, header, subject_column);
    sink.add(id, subject, label, features);
    ++index;
  }
  return sink.commit();
}

}  // namespace lethe::storage
