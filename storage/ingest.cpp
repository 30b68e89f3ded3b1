#include "storage/ingest.h"

#include <stdexcept>
#include <unordered_map>

#include "storage/csv_reader.h"
#include "storage/error.h"
#include "storage/record_id.h"

namespace lethe::storage {

SubjectMapping load_subject_mapping(const std::filesystem::path& file) {
  CsvReader csv(file);
  std::vector<std::string_view> fields;
  if (!csv.next(fields))
    throw StorageError("subject mapping '" + file.string() + "' is empty: it needs a header line 'id,subject'");
  const std::vector<std::string> header(fields.begin(), fields.end());
  const int id_column = find_column(header, "id");
  const int subject_column = find_column(header, "subject");
  if (id_column < 0 || subject_column < 0)
    throw StorageError("subject mapping " + csv.where() + ": the header must name the columns 'id' and 'subject'");
  SubjectMapping mapping{file, {}};
  std::unordered_map<std::string, uint64_t> line_of_id;
  while (csv.next(fields)) {
    if (fields.size() != header.size())
      throw StorageError("subject mapping " + csv.where() + " has " + std::to_string(fields.size()) +
                         " fields but the header (line 1) has " + std::to_string(header.size()));
    std::string id(fields[id_column]);
    if (id.empty()) throw StorageError("subject mapping " + csv.where() + " has an empty id");
    if (record_id_problem(id)) validate_record_id(id, "the id", "subject mapping " + csv.where());
    if (!fields[subject_column].empty() && record_id_problem(fields[subject_column]))
      validate_record_id(fields[subject_column], "the subject", "subject mapping " + csv.where());
    const auto [it, inserted] = line_of_id.emplace(id, csv.line());
    if (!inserted)
      throw StorageError("subject mapping '" + file.string() + "' lists id '" + id + "' twice, on lines " +
                         std::to_string(it->second) + " and " + std::to_string(csv.line()) +
                         ": each id belongs to one subject");
    mapping.subject_by_id.emplace(std::move(id), std::string(fields[subject_column]));
  }
  return mapping;
}

std::string default_id_prefix(const std::filesystem::path& input) {
  const std::string name = input.filename().string();
  const size_t end = name.find_first_of("-.");
  return name.substr(0, end == 0 ? name.size() : end);
}

DatasetLayout IngestSink::checked(const IngestOptions& options, DatasetLayout layout) {
  if (!(options.public_fraction >= 0.0 && options.public_fraction <= 1.0))
    throw std::invalid_argument("the public fraction must be within [0, 1], got " +
                                std::to_string(options.public_fraction));
  layout.seed = options.seed;
  layout.public_fraction = options.public_fraction;
  layout.chunk_records = options.chunk_records;
  return layout;
}

IngestSink::IngestSink(const IngestOptions& options, DatasetLayout layout)
    : assigner_(options.seed),
      public_fraction_(options.public_fraction),
      mapping_(options.subject_mapping ? std::optional(load_subject_mapping(*options.subject_mapping)) : std::nullopt),
      writer_(options.out, checked(options, std::move(layout))) {
  report_.file = options.out;
  report_.feature_type = writer_.layout().feature_type;
  report_.feature_shape = writer_.layout().feature_shape;
  report_.mapping_entries = mapping_ ? mapping_->subject_by_id.size() : 0;
}

void IngestSink::add(std::string_view id, std::string_view subject, int32_t label, std::span<const uint8_t> features) {
  if (mapping_ && subject.empty()) {
    const auto it = mapping_->subject_by_id.find(std::string(id));
    if (it != mapping_->subject_by_id.end()) {
      subject = it->second;
      ++mapping_matched_;
    }
  }
  const bool is_public = assigner_.is_public(id, public_fraction_);
  writer_.append(id, subject, label, is_public, features);
  ++report_.records;
  if (is_public) ++report_.public_records;
  if (!subject.empty()) ++report_.records_with_subject;
  ++report_.label_counts[label];
}

IngestReport IngestSink::commit() {
  writer_.commit();
  report_.mapping_unmatched = report_.mapping_entries - mapping_matched_;
  return report_;
}

}  // namespace lethe::storage
