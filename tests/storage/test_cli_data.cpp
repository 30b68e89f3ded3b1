// Tests of `lethe ingest`, `inspect`, `erase` and `compact` through the built binary: JSON on
// stdout, and exit status 1 with one "lethe: error:" line naming the file for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "storage/hdf5.h"
#include "tests/storage/test_dataset_fixtures.h"

using namespace lethe::storage::dataset_testing;
using nlohmann::json;

namespace {

struct CliRun {
  int status = -1;
  std::string out;
  std::string err;
};

// Runs `lethe <arguments>` (arguments already shell-quoted where needed).
CliRun run_lethe(const fs::path& dir, const std::string& arguments) {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string command = std::string(LETHE_BINARY) + " --log-level warn " + arguments + " >" + out.string() +
                              " 2>" + err.string();
  const int raw = std::system(command.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(out), slurp(err)};
}

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

}  // namespace

TEST(CliData, IngestInspectEraseCompact) {
  const fs::path dir = fresh_dir("cli_flow");
  const IdxFiles files = write_idx(dir, 120, "tiny");
  write_file(dir / "owners.csv", "id,subject\ntiny-1,ann\ntiny-2,ann\ntiny-3,ben\n");
  const fs::path data = dir / "tiny.h5";
  const CliRun ingest = run_lethe(dir, "ingest --format idx --images " + quoted(files.images) + " --labels " +
                                    quoted(files.labels) + " --out " + quoted(data) +
                                    " --seed 3 --public-fraction 0.25 --subjects " + quoted(dir / "owners.csv"));
  ASSERT_EQ(ingest.status, 0) << ingest.err;
  const json summary = json::parse(ingest.out);
  EXPECT_EQ(summary["records"], 120);
  EXPECT_EQ(summary["classes"], 10);
  EXPECT_EQ(summary["feature_shape"], json::array({28, 28}));
  EXPECT_EQ(summary["subjects"], 2);
  EXPECT_EQ(summary["seed"], 3);
  EXPECT_GT(summary["public"].get<int>(), 10);
  EXPECT_LT(summary["public"].get<int>(), 50);

  const CliRun erase = run_lethe(dir, "erase --data " + quoted(data) + " --subject ann --allow-public");
  ASSERT_EQ(erase.status, 0) << erase.err;
  EXPECT_EQ(json::parse(erase.out)["erased"], json::array({"tiny-1", "tiny-2"}));
  EXPECT_FALSE(contains(slurp(data), distinctive_bytes(2, 784)));

  const CliRun unknown = run_lethe(dir, "erase --data " + quoted(data) + " --id tiny-5 --id tiny-5000");
  EXPECT_EQ(unknown.status, 1);
  EXPECT_NE(unknown.err.find("lethe: error: cannot erase record 'tiny-5000'"), std::string::npos) << unknown.err;

  const CliRun inspect = run_lethe(dir, "inspect " + quoted(data));
  ASSERT_EQ(inspect.status, 0) << inspect.err;
  const json after = json::parse(inspect.out);
  EXPECT_EQ(after["records"], 120);
  EXPECT_EQ(after["tombstoned"], 2);
  EXPECT_EQ(after["live"], 118);
  EXPECT_EQ(after["subjects"], 1);

  const CliRun compact = run_lethe(dir, "compact --data " + quoted(data));
  ASSERT_EQ(compact.status, 0) << compact.err;
  EXPECT_EQ(json::parse(compact.out)["removed"], 2);
  EXPECT_EQ(json::parse(run_lethe(dir, "inspect " + quoted(data)).out)["records"], 118);
}

TEST(CliData, BadInputsExitNonZeroWithOneMessage) {
  const fs::path dir = fresh_dir("cli_bad");
  const IdxFiles files = write_idx(dir, 40, "bad");
  const auto expect_error = [&](const std::string& arguments, const std::string& part) {
    const CliRun run = run_lethe(dir, arguments);
    EXPECT_EQ(run.status, 1) << arguments;
    EXPECT_EQ(run.err.rfind("lethe: error: ", 0), 0u) << run.err;
    EXPECT_NE(run.err.find(part), std::string::npos) << "expected '" << part << "' in: " << run.err;
    EXPECT_TRUE(run.out.empty()) << run.out;
  };
  const fs::path out = dir / "out.h5";
  const std::string idx_args = " --labels " + quoted(files.labels) + " --out " + quoted(out);

  const std::string whole = slurp(files.images);
  write_file(dir / "cut.gz", whole.substr(0, whole.size() / 2));
  expect_error("ingest --format idx --images " + quoted(dir / "cut.gz") + idx_args, (dir / "cut.gz").string());
  expect_error("ingest --format idx --images " + quoted(files.labels) + idx_args, "is not an IDX images file");
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));

  expect_error("ingest --format idx --images " + quoted(files.images) + " --labels " + quoted(files.labels) +
                   " --out " + quoted(dir / "nowhere" / "x.h5"),
               "cannot write dataset '" + (dir / "nowhere" / "x.h5").string() + "'");

  write_file(dir / "ragged.csv", "label,a,b\n1,2,3\n4,5\n");
  expect_error("ingest --format csv --csv " + quoted(dir / "ragged.csv") + " --out " + quoted(out),
               (dir / "ragged.csv").string() + "' line 3 has 2 fields");

  write_file(dir / "plain.txt", "hello");
  expect_error("inspect " + quoted(dir / "plain.txt"), "not an HDF5 file");
  { lethe::storage::h5::File foreign = lethe::storage::h5::create_file((dir / "foreign.h5").string()); }
  expect_error("erase --data " + quoted(dir / "foreign.h5") + " --id x",
               (dir / "foreign.h5").string() + "' is an HDF5 file but not a Lethe dataset");

  // A committed dataset is fine; a missing one is named.
  expect_error("compact --data " + quoted(dir / "missing.h5"), (dir / "missing.h5").string());
}

TEST(CliData, HelpShowsExamples) {
  const fs::path dir = fresh_dir("cli_help");
  const CliRun help = run_lethe(dir, "ingest --help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.out.find("Examples:"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--public-fraction"), std::string::npos);
  EXPECT_NE(help.out.find("--subjects"), std::string::npos);
}
