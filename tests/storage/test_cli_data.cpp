// Tests of `lethe ingest`, `inspect`, `erase` and `compact` through the built binary: JSON on
// stdout, and exit status 1 with one "lethe: error:" line naming the file for bad input.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>
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

namespace {

// `count` CSV records id,user,label,f0..f35 (6x6 uint8) in 3 separable classes.
std::string small_csv(int count, const std::string& id_prefix = "rec-") {
  std::string text = "id,user,label";
  for (int f = 0; f < 36; ++f) text += ",f" + std::to_string(f);
  text += '\n';
  for (int i = 0; i < count; ++i) {
    text += id_prefix + std::to_string(i) + ",u" + std::to_string(i % 7) + "," + std::to_string(i % 3);
    for (int f = 0; f < 36; ++f) text += "," + std::to_string((i % 3) * 80 + (i * 31 + f * 7) % 40);
    text += '\n';
  }
  return text;
}

std::string csv_ingest(const fs::path& csv, const fs::path& out) {
  return "ingest --format csv --csv " + quoted(csv) + " --id-column id --subject-column user --feature-type uint8 "
         "--feature-shape 6x6 --out " + quoted(out);
}

void expect_has(const std::string& text, const std::string& part) {
  EXPECT_NE(text.find(part), std::string::npos) << "expected '" << part << "' in: " << text;
}

}  // namespace

// Issue 14 finding 3: `--out /dev/null` (as root) turned /dev/null into a regular file; FIFOs,
// symlinks and directories were replaced alike. Now each is refused naming the path, and left as it was.
TEST(CliData, OutputsThatAreNotRegularFilesAreNeverReplaced) {
  const fs::path dir = fresh_dir("cli_special_out");
  write_file(dir / "r.csv", small_csv(30));
  const fs::path fifo = dir / "fifo.h5";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  write_file(dir / "precious.txt", "keep");
  fs::create_symlink(dir / "precious.txt", dir / "link.h5");
  fs::create_directory(dir / "adir.h5");
  std::vector<std::pair<fs::path, std::string>> targets{
      {fifo, "a FIFO"}, {dir / "link.h5", "a symlink"}, {dir / "adir.h5", "a directory"}};
  // A character device like /dev/null, made here rather than risking the real one.
  const fs::path device = dir / "null.h5";
  if (::mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) targets.emplace_back(device, "a character device");
  for (const auto& [target, kind] : targets) {
    const CliRun run = run_lethe(dir, csv_ingest(dir / "r.csv", target) + " --force");
    EXPECT_EQ(run.status, 1) << kind << ": " << run.err;
    expect_has(run.err, "lethe: error: refusing to replace '" + target.string() + "': it is " + kind);
    EXPECT_TRUE(run.out.empty()) << run.out;
    EXPECT_FALSE(fs::exists(target.string() + ".tmp")) << kind;
  }
  EXPECT_TRUE(fs::is_fifo(fs::symlink_status(fifo)));
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(dir / "link.h5")));
  EXPECT_EQ(slurp(dir / "precious.txt"), "keep");
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(dir / "adir.h5")));
  if (fs::exists(fs::symlink_status(device))) EXPECT_TRUE(fs::is_character_file(fs::symlink_status(device)));
}

// Issue 14 finding 3: an existing dataset was overwritten without asking.
TEST(CliData, ExistingDatasetIsReplacedOnlyWithForce) {
  const fs::path dir = fresh_dir("cli_force");
  write_file(dir / "r.csv", small_csv(30));
  const fs::path out = dir / "r.h5";
  ASSERT_EQ(run_lethe(dir, csv_ingest(dir / "r.csv", out) + " --seed 1").status, 0);
  const std::string before = slurp(out);
  const CliRun again = run_lethe(dir, csv_ingest(dir / "r.csv", out) + " --seed 2");
  EXPECT_EQ(again.status, 1) << again.err;
  expect_has(again.err, "refusing to overwrite '" + out.string() + "': the file exists; pass --force");
  EXPECT_EQ(slurp(out), before) << "the existing dataset is untouched";
  const CliRun forced = run_lethe(dir, csv_ingest(dir / "r.csv", out) + " --seed 2 --force");
  ASSERT_EQ(forced.status, 0) << forced.err;
  EXPECT_EQ(json::parse(forced.out)["seed"], 2);
}

// Issue 14 finding 3: `lethe compact` through a symlink replaced the link by a compacted copy and
// left the old file, tombstoned ids and all, where the link pointed; later erasures never reached it.
TEST(CliData, CompactAndEraseThroughASymlinkWorkOnTheRealFile) {
  const fs::path dir = fresh_dir("cli_symlink");
  write_file(dir / "r.csv", small_csv(30));
  const fs::path real = dir / "real.h5";
  ASSERT_EQ(run_lethe(dir, csv_ingest(dir / "r.csv", real)).status, 0);
  const fs::path link = dir / "link.h5";
  fs::create_symlink(real, link);
  const CliRun erase = run_lethe(dir, "erase --data " + quoted(link) + " --id rec-4");
  ASSERT_EQ(erase.status, 0) << erase.err;
  const CliRun compact = run_lethe(dir, "compact --data " + quoted(link));
  ASSERT_EQ(compact.status, 0) << compact.err;
  EXPECT_EQ(json::parse(compact.out)["file"], fs::canonical(real).string());
  EXPECT_TRUE(fs::is_symlink(fs::symlink_status(link))) << "the link is kept";
  const json after = json::parse(run_lethe(dir, "inspect " + quoted(real)).out);
  EXPECT_EQ(after["records"], 29) << "the real file was compacted: no stale copy keeps the erased row";
  EXPECT_EQ(after["tombstoned"], 0);
  const CliRun erase_again = run_lethe(dir, "erase --data " + quoted(link) + " --id rec-5");
  ASSERT_EQ(erase_again.status, 0) << erase_again.err;
  EXPECT_EQ(json::parse(run_lethe(dir, "inspect " + quoted(real)).out)["tombstoned"], 1);
}

// Issue 14 finding 8: a write failing on a full disk (`lethe train`'s checkpoints, `lethe pretrain`'s
// backbone) left an HDF5 file open, and HDF5's exit handler then crashed closing it (exit 139).
// A 1 MiB tmpfs with one free page makes the final flush fail; the run must exit 1, name the file
// and the cause, and leave no temporary behind.
TEST(CliData, WriteFailingOnAFullDiskExitsCleanlyWithoutCrashAtExit) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  const fs::path dir = fresh_dir("cli_full_disk");
  const fs::path full = dir / "full";
  fs::create_directory(full);
  if (std::system(("mount -t tmpfs -o size=1m tmpfs " + quoted(full) + " 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "mount -t tmpfs is not permitted here";
  struct Unmount {
    fs::path at;
    ~Unmount() { (void)std::system(("umount " + quoted(at)).c_str()); }
  } unmount{full};

  write_file(dir / "r.csv", small_csv(300));
  ASSERT_EQ(run_lethe(dir, csv_ingest(dir / "r.csv", dir / "r.h5") + " --public-fraction 0.5").status, 0);
  write_file(dir / "job.yaml",
             "dataset: r.h5\nbackbone: unused.h5\nseed: 11\ns3t: {shards: 1, slices: 2, sequences: 1}\n"
             "model: {architecture: mlp, widths: [8, 8], lora_rank: 2, lora_alpha: 4, num_classes: 3}\n"
             "pretrain: {epochs: 1, batch_size: 16}\n");
  struct statvfs fs_info {};
  ASSERT_EQ(::statvfs(full.c_str(), &fs_info), 0);
  ASSERT_GT(fs_info.f_bavail, 1u);
  write_file(full / "fill", std::string((fs_info.f_bavail - 1) * fs_info.f_bsize, 'F'));  // one page left

  const fs::path backbone = full / "bb.h5";
  const std::string command = std::string(LETHE_BINARY) + " --log-level warn pretrain --config " +
                              quoted(dir / "job.yaml") + " --out " + quoted(backbone) + " >/dev/null 2>" +
                              quoted(dir / "err.txt");
  const int raw = std::system(command.c_str());
  const std::string err = slurp(dir / "err.txt");
  ASSERT_TRUE(WIFEXITED(raw)) << "killed by signal " << (WIFSIGNALED(raw) ? WTERMSIG(raw) : 0) << "; stderr: " << err;
  EXPECT_EQ(WEXITSTATUS(raw), 1) << err;
  expect_has(err, "lethe: error: ");
  expect_has(err, (full / "bb.h5.tmp").string());
  expect_has(err, "No space left on device");
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line: " << err;
  EXPECT_FALSE(fs::exists(backbone));
  EXPECT_FALSE(fs::exists(full / "bb.h5.tmp")) << "the half-written backbone must not keep the space";

  // The same for a dataset: ingest into the full file system.
  const CliRun ingest = run_lethe(dir, csv_ingest(dir / "r.csv", full / "d.h5"));
  EXPECT_EQ(ingest.status, 1) << ingest.err;
  expect_has(ingest.err, (full / "d.h5").string());
  EXPECT_FALSE(fs::exists(full / "d.h5.tmp"));
}

// Issue 14 finding 9: ingest accepted ids no deletion request can name (over 256 bytes, control
// characters). The rule of storage/record_id.h now refuses the file, naming line and column.
TEST(CliData, IdsThatNoDeletionCouldNameAreRefusedAtIngest) {
  const fs::path dir = fresh_dir("cli_ids");
  const fs::path out = dir / "ids.h5";
  const auto refused = [&](const std::string& csv_text, const std::vector<std::string>& parts) {
    write_file(dir / "ids.csv", csv_text);
    const CliRun run = run_lethe(dir, csv_ingest(dir / "ids.csv", out));
    EXPECT_EQ(run.status, 1) << run.err;
    for (const auto& part : parts) expect_has(run.err, part);
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  };
  const std::string header = small_csv(0);
  const auto row = [](const std::string& id, const std::string& user) {
    std::string text = id + "," + user + ",1";
    for (int f = 0; f < 36; ++f) text += ",7";
    return text + "\n";
  };
  const std::string file = "'" + (dir / "ids.csv").string() + "' line 3, column 1 ('id')";
  refused(header + row("ok", "u") + row(std::string(257, 'x'), "u"),
          {file, "is 257 bytes; at most 256 allowed", "so that a deletion request can name them"});
  refused(header + row("ok", "u") + row("bad\x01id", "u"), {file, "bad\\x01id", "contains a control character"});
  refused(header + row("ok", "u\x7fser"), {"line 2, column 2 ('user')", "the subject", "contains a control character"});
  // Exactly 256 bytes is what a deletion request accepts, so ingest accepts it too.
  write_file(dir / "ids.csv", header + row(std::string(256, 'y'), "u"));
  EXPECT_EQ(run_lethe(dir, csv_ingest(dir / "ids.csv", out)).status, 0);

  const IdxFiles files = write_idx(dir, 5, "idx");
  const CliRun idx = run_lethe(dir, "ingest --format idx --images " + quoted(files.images) + " --labels " +
                                        quoted(files.labels) + " --out " + quoted(dir / "idx.h5") + " --id-prefix " +
                                        std::string(260, 'p'));
  EXPECT_EQ(idx.status, 1) << idx.err;
  expect_has(idx.err, "image 0");
  expect_has(idx.err, "at most 256 allowed");
}

// Issue 14 finding 11: --feature-shape 4294967296x4294967296 wrapped around to "0 values".
TEST(CliData, FeatureShapeWhoseSizeOverflowsIsRefused) {
  const fs::path dir = fresh_dir("cli_shape");
  write_file(dir / "r.csv", small_csv(3));
  const std::string base = "ingest --format csv --csv " + quoted(dir / "r.csv") + " --id-column id --out " +
                           quoted(dir / "r.h5") + " --feature-shape ";
  for (const std::string shape : {"4294967296x4294967296", "65536x65536x2"}) {
    const CliRun run = run_lethe(dir, base + shape);
    EXPECT_EQ(run.status, 1) << shape << ": " << run.err;
    expect_has(run.err, "--feature-shape '" + shape + "'");
    expect_has(run.err, "at most 16777216 are allowed");
  }
}
