// Tests of IDX and CSV ingest: round trips of small generated files, subject mappings, every bad
// input of issue 2 (each a StorageError naming the file and line or record), and the real
// Fashion-MNIST test set.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "storage/dataset.h"
#include "storage/error.h"
#include "storage/gzip_input.h"
#include "storage/ingest.h"
#include "storage/ingest_csv.h"
#include "storage/ingest_idx.h"
#include "storage/record_id.h"
#include "tests/storage/test_dataset_fixtures.h"

using namespace lethe::storage;
using namespace lethe::storage::dataset_testing;

namespace {

// The message of the StorageError that `action` throws ("" if none).
template <typename Action>
std::string error_of(Action&& action) {
  try {
    action();
  } catch (const StorageError& e) {
    return e.what();
  }
  return "";
}

void expect_contains(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "expected '" << part << "' in: " << message;
}

void expect_no_output(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  EXPECT_FALSE(fs::exists(out.string() + ".tmp")) << out;
}

IngestOptions options_for(const fs::path& out) {
  IngestOptions options;
  options.out = out;
  options.seed = 5;
  return options;
}

}  // namespace

TEST(IngestIdx, RoundTripsGeneratedFiles) {
  const fs::path dir = fresh_dir("idx_roundtrip");
  const IdxFiles files = write_idx(dir, 300);
  IngestOptions options = options_for(dir / "small.h5");
  options.public_fraction = 0.2;
  options.chunk_records = 64;
  const IngestReport report = ingest_idx({files.images, files.labels}, options);
  EXPECT_EQ(report.records, 300u);
  EXPECT_EQ(report.feature_shape, (std::vector<uint64_t>{28, 28}));
  EXPECT_EQ(report.label_counts.size(), 10u);
  EXPECT_FALSE(fs::exists(dir / "small.h5.tmp"));

  const Dataset dataset = Dataset::open(dir / "small.h5");
  ASSERT_EQ(dataset.size(), 300u);
  EXPECT_EQ(dataset.layout().seed, 5u);
  EXPECT_EQ(dataset.layout().chunk_records, 64u);
  const RecordAssigner assigner(5);
  uint64_t expected_public = 0;
  for (uint64_t i = 0; i < 300; ++i) {
    EXPECT_EQ(dataset.id(i), "small-" + std::to_string(i));
    EXPECT_EQ(dataset.label(i), label_of(i));
    EXPECT_EQ(dataset.is_public(i), assigner.is_public(dataset.id(i), 0.2));
    expected_public += dataset.is_public(i);
  }
  EXPECT_EQ(report.public_records, expected_public);
  EXPECT_GT(expected_public, 30u);
  EXPECT_LT(expected_public, 90u);
  const std::vector<uint64_t> rows{0, 63, 64, 299};
  std::vector<uint8_t> out(rows.size() * 784);
  dataset.read_features(rows, out);
  for (size_t k = 0; k < rows.size(); ++k)
    EXPECT_EQ(std::vector<uint8_t>(out.begin() + k * 784, out.begin() + (k + 1) * 784), distinctive_bytes(rows[k], 784));
}

TEST(IngestIdx, SubjectMappingAndIdPrefix) {
  const fs::path dir = fresh_dir("idx_mapping");
  const IdxFiles files = write_idx(dir, 50);
  write_file(dir / "owners.csv", "subject,id\nalice,fm-3\nbob,fm-4\n\"alice\",fm-10\ncarol,fm-999\n");
  IngestOptions options = options_for(dir / "m.h5");
  options.id_prefix = "fm";
  options.subject_mapping = dir / "owners.csv";
  const IngestReport report = ingest_idx({files.images, files.labels}, options);
  EXPECT_EQ(report.records_with_subject, 3u);
  EXPECT_EQ(report.mapping_entries, 4u);
  EXPECT_EQ(report.mapping_unmatched, 1u);
  const Dataset dataset = Dataset::open(dir / "m.h5");
  EXPECT_EQ(dataset.id(0), "fm-0");
  EXPECT_EQ(dataset.rows_of_subject("alice"), (std::vector<uint64_t>{3, 10}));
  EXPECT_EQ(dataset.rows_of_subject("bob"), (std::vector<uint64_t>{4}));
  EXPECT_EQ(dataset.subject_count(), 2u);

  write_file(dir / "twice.csv", "id,subject\nfm-1,a\nfm-2,b\nfm-1,c\n");
  options.subject_mapping = dir / "twice.csv";
  options.out = dir / "twice.h5";
  const std::string message = error_of([&] { (void)ingest_idx({files.images, files.labels}, options); });
  expect_contains(message, (dir / "twice.csv").string());
  expect_contains(message, "'fm-1'");
  expect_contains(message, "lines 2 and 4");
  expect_no_output(dir / "twice.h5");
}

TEST(IngestIdx, TruncatedGzipIsRefusedAndLeavesNoFile) {
  const fs::path dir = fresh_dir("idx_truncated");
  const IdxFiles files = write_idx(dir, 200);
  const std::string whole = slurp(files.images);
  write_file(files.images, whole.substr(0, whole.size() / 2));
  const fs::path out = dir / "t.h5";
  const std::string message = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(message, files.images.string());
  expect_contains(message, "truncated");
  expect_no_output(out);

  // A gzip stream missing only its 8-byte trailer (CRC and size) is caught too.
  write_file(files.images, whole.substr(0, whole.size() - 4));
  const std::string trailer = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(trailer, files.images.string());
  expect_no_output(out);
}

TEST(IngestIdx, ShortImageDataIsRefusedNamingTheImages) {
  const fs::path dir = fresh_dir("idx_short");
  const IdxFiles files = write_idx(dir, 20);
  std::string images = idx_images(20, 28, 28);
  images.resize(images.size() - 100);  // a complete gzip stream of incomplete IDX data
  write_gzip(files.images, images);
  const fs::path out = dir / "s.h5";
  const std::string message = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(message, files.images.string());
  expect_contains(message, "images 0..19 of 20");
  expect_no_output(out);
}

TEST(IngestIdx, WrongMagicIsRefused) {
  const fs::path dir = fresh_dir("idx_magic");
  const IdxFiles files = write_idx(dir, 10);
  const fs::path out = dir / "w.h5";
  // The labels file given as images (and the images as labels).
  const std::string message = error_of([&] { (void)ingest_idx({files.labels, files.images}, options_for(out)); });
  expect_contains(message, files.images.string());
  expect_contains(message, "magic number is 0x00000803, expected 0x00000801");
  expect_no_output(out);
  write_gzip(files.images, "this is not IDX data at all");
  const std::string text = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(text, "is not an IDX images file");
  expect_no_output(out);
}

TEST(IngestIdx, ImageAndLabelCountsMustAgree) {
  const fs::path dir = fresh_dir("idx_counts");
  const IdxFiles files = write_idx(dir, 30);
  write_gzip(files.labels, idx_labels(29));
  const fs::path out = dir / "c.h5";
  const std::string message = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(message, "'" + files.images.string() + "' holds 30 images");
  expect_contains(message, "'" + files.labels.string() + "' holds 29 labels");
  expect_no_output(out);
}

TEST(IngestIdx, UnwritableOutputIsRefused) {
  const fs::path dir = fresh_dir("idx_unwritable");
  const IdxFiles files = write_idx(dir, 10);
  const fs::path out = dir / "missing-dir" / "x.h5";
  const std::string message = error_of([&] { (void)ingest_idx({files.images, files.labels}, options_for(out)); });
  expect_contains(message, "cannot write dataset '" + out.string() + "'");
  expect_no_output(out);
}

TEST(IngestCsv, ReadsIdsSubjectsLabelsAndFeatures) {
  const fs::path dir = fresh_dir("csv_roundtrip");
  write_file(dir / "r.csv",
             "id,p0,p1,label,p2,user,p3\r\n"
             "a-1,1,2,3,4,\"smith, jo\",5\r\n"
             "\n"
             "a-2, 250 ,0,+1,7,,9\r\n"
             "a-3,0,0,0,0,kim,255\r\n");
  CsvSource source;
  source.file = dir / "r.csv";
  source.id_column = "id";
  source.subject_column = "user";
  source.feature_type = FeatureType::uint8;
  source.feature_shape = {2, 2};
  const IngestReport report = ingest_csv(source, options_for(dir / "r.h5"));
  EXPECT_EQ(report.records, 3u);
  EXPECT_EQ(report.records_with_subject, 2u);
  const Dataset dataset = Dataset::open(dir / "r.h5");
  EXPECT_EQ(dataset.layout().feature_shape, (std::vector<uint64_t>{2, 2}));
  EXPECT_EQ(dataset.id(1), "a-2");
  EXPECT_EQ(dataset.label(1), 1);
  EXPECT_EQ(dataset.subject(0), "smith, jo");
  EXPECT_EQ(dataset.rows_of_subject("kim"), (std::vector<uint64_t>{2}));
  std::vector<uint8_t> features(3 * 4);
  const std::vector<uint64_t> rows{0, 1, 2};
  dataset.read_features(rows, features);
  EXPECT_EQ(features, (std::vector<uint8_t>{1, 2, 4, 5, 250, 0, 7, 9, 0, 0, 0, 255}));

  // Float features, generated ids, subjects from a mapping file.
  write_file(dir / "f.csv", "label,x,y\n0,0.5,-2e3\n1,1.25,3\n");
  write_file(dir / "map.csv", "id,subject\nf-1,zoe\n");
  CsvSource floats;
  floats.file = dir / "f.csv";
  IngestOptions options = options_for(dir / "f.h5");
  options.subject_mapping = dir / "map.csv";
  (void)ingest_csv(floats, options);
  const Dataset float_dataset = Dataset::open(dir / "f.h5");
  EXPECT_EQ(float_dataset.layout().feature_type, FeatureType::float32);
  EXPECT_EQ(float_dataset.id(1), "f-1");
  EXPECT_EQ(float_dataset.subject(1), "zoe");
  float xy[2];
  const std::vector<uint64_t> first{0};
  float_dataset.read_features(first, {reinterpret_cast<uint8_t*>(xy), 8});
  EXPECT_FLOAT_EQ(xy[0], 0.5f);
  EXPECT_FLOAT_EQ(xy[1], -2000.0f);
}

TEST(IngestCsv, BadRowsAreRefusedNamingLineAndColumn) {
  const fs::path dir = fresh_dir("csv_bad");
  const fs::path out = dir / "bad.h5";
  CsvSource source;
  source.file = dir / "bad.csv";
  source.id_column = "id";
  const auto ingest_text = [&](const std::string& text) {
    write_file(source.file, text);
    const std::string message = error_of([&] { (void)ingest_csv(source, options_for(out)); });
    expect_no_output(out);
    return message;
  };
  const std::string file = "'" + source.file.string() + "'";

  const std::string ragged = ingest_text("id,label,a,b\nr1,0,1,2\nr2,1,3\n");
  expect_contains(ragged, file + " line 3 has 3 fields but the header (line 1) has 4");

  const std::string non_numeric = ingest_text("id,label,a,b\nr1,0,1,2\nr2,1,3,x7\n");
  expect_contains(non_numeric, file + " line 3, column 4 ('b'): 'x7' is not a number");

  const std::string bad_label = ingest_text("id,label,a\nr1,zero,1\n");
  expect_contains(bad_label, file + " line 2, column 2 ('label'): 'zero' is not an integer label");

  const std::string duplicate = ingest_text("id,label,a\nr1,0,1\nr2,0,1\nr1,0,1\n");
  expect_contains(duplicate, "the id 'r1' twice, on lines 2 and 4");
  expect_contains(duplicate, file);

  const std::string unquoted = ingest_text("id,label,a\n\"r1,0,1\n");
  expect_contains(unquoted, file + " line 2");

  const std::string no_label = ingest_text("id,class,a\nr1,0,1\n");
  expect_contains(no_label, "has no column 'label'");

  source.feature_type = FeatureType::uint8;
  const std::string range = ingest_text("id,label,a\nr1,0,256\n");
  expect_contains(range, file + " line 2, column 3 ('a'): 256 is outside 0..255");
}

TEST(IngestCsv, GzippedCsvAndTruncation) {
  const fs::path dir = fresh_dir("csv_gzip");
  std::string text = "label,a\n";
  for (int i = 0; i < 2000; ++i) text += std::to_string(i % 3) + "," + std::to_string(i) + "\n";
  write_gzip(dir / "g.csv.gz", text);
  CsvSource source;
  source.file = dir / "g.csv.gz";
  EXPECT_EQ(ingest_csv(source, options_for(dir / "g.h5")).records, 2000u);
  EXPECT_EQ(Dataset::open(dir / "g.h5").id(5), "g-5");

  const std::string whole = slurp(dir / "g.csv.gz");
  write_file(dir / "g.csv.gz", whole.substr(0, whole.size() * 2 / 3));
  const fs::path out = dir / "gt.h5";
  const std::string message = error_of([&] { (void)ingest_csv(source, options_for(out)); });
  expect_contains(message, (dir / "g.csv.gz").string());
  expect_contains(message, "truncated");
  expect_no_output(out);
}

TEST(IngestIdx, RealFashionMnistTestSet) {
  const fs::path data = LETHE_FASHION_MNIST_DIR;
  const IdxSource source{data / "t10k-images-idx3-ubyte.gz", data / "t10k-labels-idx1-ubyte.gz"};
  ASSERT_TRUE(fs::exists(source.images)) << source.images << " is missing: install the package dataset-fashion-mnist";
  const fs::path dir = fresh_dir("fashion");
  IngestOptions options = options_for(dir / "t10k.h5");
  options.public_fraction = 0.1;
  const IngestReport report = ingest_idx(source, options);
  EXPECT_EQ(report.records, 10000u);
  const Dataset dataset = Dataset::open(dir / "t10k.h5");
  EXPECT_EQ(dataset.size(), 10000u);
  EXPECT_EQ(dataset.layout().feature_shape, (std::vector<uint64_t>{28, 28}));
  EXPECT_EQ(dataset.id(9999), "t10k-9999");
  std::map<int32_t, uint64_t> classes;
  for (uint64_t row = 0; row < dataset.size(); ++row) ++classes[dataset.label(row)];
  EXPECT_EQ(classes.size(), 10u);
  for (const auto& [label, count] : classes) EXPECT_EQ(count, 1000u) << "class " << label;  // the test set is balanced
  EXPECT_NEAR(static_cast<double>(dataset.public_count()), 1000.0, 120.0);

  // The last image equals the last 784 bytes of the decompressed IDX file.
  GzipInput input(source.images);
  std::vector<uint8_t> raw(16 + 10000 * 784);
  input.read_exact(raw.data(), raw.size(), "the whole file");
  const std::vector<uint64_t> last{9999};
  std::vector<uint8_t> image(784);
  dataset.read_features(last, image);
  EXPECT_TRUE(std::equal(image.begin(), image.end(), raw.end() - 784));
}

// Issue 14 finding 9: one rule (storage/record_id.h) for what ingest stores and a deletion request
// may name; a CSV breaking it is refused with kRefused, naming line, column and rule.
TEST(IngestCsv, IdsBreakingTheRecordIdRuleAreRefused) {
  const fs::path dir = fresh_dir("csv_id_rule");
  CsvSource source;
  source.file = dir / "ids.csv";
  source.id_column = "id";
  const fs::path out = dir / "ids.h5";
  for (const std::string& id : {std::string(300, 'z'), std::string("tab\tinside"), std::string("nl\x1b")}) {
    write_file(source.file, "id,label,a\nfine,0,1\n" + id + ",1,2\n");
    try {
      (void)ingest_csv(source, options_for(out));
      ADD_FAILURE() << "accepted id " << printable_id(id);
    } catch (const StorageError& e) {
      EXPECT_EQ(e.kind(), StorageErrorKind::kRefused) << e.what();
      expect_contains(e.what(), "'" + source.file.string() + "' line 3, column 1 ('id')");
      expect_contains(e.what(), *record_id_problem(id));
    }
    expect_no_output(out);
  }
  EXPECT_EQ(record_id_problem(std::string(kMaxRecordIdLength, 'a')), std::nullopt);
  EXPECT_EQ(*record_id_problem(""), "must not be empty");
}
