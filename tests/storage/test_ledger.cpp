// The deletion ledger: submission order, idempotency, status transitions, durability under SIGKILL,
// no clear record id left in any database file after completion, and refusal of foreign files.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "scratch_files.h"
#include "storage/ledger.h"

namespace lethe::storage {
namespace {

namespace fs = std::filesystem;

fs::path ledger_in(const std::string& name) { return scratch::fresh_dir("ledger", name) / "ledger.sqlite"; }

// Runs `body` and returns the LedgerError's message; fails the test when nothing is thrown.
template <typename Body>
std::string error_of(Body&& body) {
  try {
    body();
  } catch (const LedgerError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no LedgerError was thrown";
  return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The concatenated bytes of every file of the database: ledger.sqlite, -wal, -shm (and any journal).
std::string database_bytes(const fs::path& ledger) {
  std::string bytes;
  for (const auto& entry : fs::directory_iterator(ledger.parent_path())) {
    if (entry.path().filename().string().rfind(ledger.filename().string(), 0) == 0)
      bytes += scratch::read_bytes(entry.path());
  }
  return bytes;
}

// Raw SQL on a ledger file through a second connection, as another program would.
void raw_sql(const fs::path& file, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message);
  const std::string text = message != nullptr ? message : "";
  sqlite3_free(message);
  sqlite3_close(db);
  ASSERT_EQ(rc, SQLITE_OK) << text;
}

const nlohmann::json kReceipt = {{"models", nlohmann::json::array()}, {"version", 3}};

TEST(Ledger, SubmitGetAndUnfinishedInSubmissionOrder) {
  Ledger ledger(ledger_in("order"));
  const auto first = ledger.submit({"train-00001", "train-00002"}, std::nullopt, std::nullopt);
  const auto second = ledger.submit({}, std::string("alice"), std::string("key-1"));
  const auto third = ledger.submit({"train-00003"}, std::nullopt, std::nullopt);
  EXPECT_TRUE(first.created);
  EXPECT_EQ(first.request.id.size(), 20u);
  EXPECT_EQ(first.request.id.rfind("del-", 0), 0u);
  EXPECT_EQ(first.request.id.find_first_not_of("0123456789abcdef", 4), std::string::npos) << first.request.id;
  EXPECT_NE(first.request.id, second.request.id);

  const auto got = ledger.get(first.request.id);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->record_ids, (std::vector<std::string>{"train-00001", "train-00002"}));
  EXPECT_EQ(got->record_hashes, (std::vector<std::string>{ledger.hash_id("train-00001"), ledger.hash_id("train-00002")}));
  EXPECT_FALSE(got->subject.has_value());
  EXPECT_EQ(got->status, RequestStatus::kQueued);
  EXPECT_GT(got->submitted_ms, 1'600'000'000'000);
  EXPECT_EQ(got->applied_ms, 0);
  EXPECT_TRUE(got->receipt.is_null());

  const auto by_subject = ledger.get(second.request.id);
  ASSERT_TRUE(by_subject.has_value());
  EXPECT_EQ(by_subject->subject, std::optional<std::string>("alice"));
  EXPECT_EQ(by_subject->subject_hash, std::optional<std::string>(ledger.hash_id("alice")));
  EXPECT_EQ(by_subject->idempotency_key, std::optional<std::string>("key-1"));
  EXPECT_TRUE(by_subject->record_ids.empty());

  EXPECT_FALSE(ledger.get("del-0000000000000000").has_value());

  ledger.complete(second.request.id, kReceipt);
  const auto pending = ledger.unfinished();
  ASSERT_EQ(pending.size(), 2u);
  EXPECT_EQ(pending[0].id, first.request.id);
  EXPECT_EQ(pending[1].id, third.request.id);
  EXPECT_EQ(pending[1].record_ids, std::vector<std::string>{"train-00003"});
}

TEST(Ledger, MalformedSubmissionsAreRefused) {
  Ledger ledger(ledger_in("malformed"));
  EXPECT_TRUE(contains(error_of([&] { (void)ledger.submit({}, std::nullopt, std::nullopt); }), "got neither"));
  EXPECT_TRUE(contains(error_of([&] { (void)ledger.submit({"a"}, std::string("s"), std::nullopt); }), "got both"));
  EXPECT_TRUE(contains(error_of([&] { (void)ledger.submit({"a", ""}, std::nullopt, std::nullopt); }), "empty record id"));
  EXPECT_TRUE(contains(error_of([&] { (void)ledger.submit({"a"}, std::nullopt, std::string()); }), "idempotency key"));
  EXPECT_TRUE(ledger.unfinished().empty());
}

TEST(Ledger, SameIdempotencyKeyReturnsTheEarlierRequest) {
  const auto path = ledger_in("idempotent");
  std::string id;
  {
    Ledger ledger(path);
    const auto first = ledger.submit({"r1", "r2"}, std::nullopt, std::string("client-42"));
    const auto again = ledger.submit({"r1", "r2"}, std::nullopt, std::string("client-42"));
    EXPECT_TRUE(first.created);
    EXPECT_FALSE(again.created);
    EXPECT_EQ(again.request.id, first.request.id);
    EXPECT_EQ(again.request.record_ids, first.request.record_ids);
    id = first.request.id;
    // The same ids in another order are the same request.
    EXPECT_FALSE(ledger.submit({"r2", "r1"}, std::nullopt, std::string("client-42")).created);
    // Another key, same payload: a new request.
    EXPECT_TRUE(ledger.submit({"r1", "r2"}, std::nullopt, std::string("client-43")).created);
    ledger.complete(id, kReceipt);
  }
  // After a restart and after completion (the clear key is gone), the key still finds the request.
  Ledger reopened(path);
  const auto after = reopened.submit({"r1", "r2"}, std::nullopt, std::string("client-42"));
  EXPECT_FALSE(after.created);
  EXPECT_EQ(after.request.id, id);
  EXPECT_EQ(after.request.status, RequestStatus::kCompleted);
  EXPECT_FALSE(after.request.idempotency_key.has_value());
  EXPECT_EQ(reopened.counts().at(RequestStatus::kCompleted), 1);
  EXPECT_EQ(reopened.counts().at(RequestStatus::kQueued), 1);
}

TEST(Ledger, IdempotencyKeyReusedForAnotherRequestIsRefused) {
  Ledger ledger(ledger_in("key_reuse"));
  const auto first = ledger.submit({"r1", "r2"}, std::nullopt, std::string("k"));
  for (const auto& [records, subject] :
       std::vector<std::pair<std::vector<std::string>, std::optional<std::string>>>{
           {{"r1"}, std::nullopt}, {{"r1", "r2", "r3"}, std::nullopt}, {{}, std::string("r1")}}) {
    const auto message = error_of([&] { (void)ledger.submit(records, subject, std::string("k")); });
    EXPECT_TRUE(contains(message, "idempotency key was already used for request " + first.request.id)) << message;
    EXPECT_TRUE(contains(message, "use a new key")) << message;
  }
  ledger.complete(first.request.id, kReceipt);  // compared through the payload hash once the clear ids are gone
  EXPECT_TRUE(contains(error_of([&] { (void)ledger.submit({"r3"}, std::nullopt, std::string("k")); }), "already used"));
  EXPECT_EQ(ledger.counts().at(RequestStatus::kQueued), 0);
}

TEST(Ledger, StatusTransitionsStoreReceiptsAndTimestamps) {
  Ledger ledger(ledger_in("transitions"));
  const auto id = ledger.submit({"x1"}, std::nullopt, std::nullopt).request.id;
  const nlohmann::json applied = {{"status", "applied"}, {"records", {ledger.hash_id("x1")}}};
  ledger.mark_applied(id, applied);
  auto request = ledger.get(id).value();
  EXPECT_EQ(request.status, RequestStatus::kApplied);
  EXPECT_EQ(request.receipt, applied);
  EXPECT_GE(request.applied_ms, request.submitted_ms);
  EXPECT_EQ(request.record_ids, std::vector<std::string>{"x1"});  // still in clear: the work is not done

  const nlohmann::json done = {{"status", "completed"}, {"records_erased", {ledger.hash_id("x1")}}, {"version", 7}};
  ledger.complete(id, done);
  request = ledger.get(id).value();
  EXPECT_EQ(request.status, RequestStatus::kCompleted);
  EXPECT_EQ(request.receipt, done);
  EXPECT_GE(request.completed_ms, request.applied_ms);
  EXPECT_TRUE(request.record_ids.empty());
  EXPECT_EQ(request.record_hashes, std::vector<std::string>{ledger.hash_id("x1")});

  const auto failing = ledger.submit({}, std::string("bob"), std::string("kb")).request.id;
  ledger.fail(failing, "dataset file missing", nullptr);
  request = ledger.get(failing).value();
  EXPECT_EQ(request.status, RequestStatus::kFailed);
  EXPECT_EQ(request.error, "dataset file missing");
  EXPECT_TRUE(request.receipt.is_null());
  EXPECT_FALSE(request.subject.has_value());
  EXPECT_FALSE(request.idempotency_key.has_value());
  EXPECT_EQ(request.subject_hash, std::optional<std::string>(ledger.hash_id("bob")));

  const auto counts = ledger.counts();
  EXPECT_EQ(counts.size(), 4u);
  EXPECT_EQ(counts.at(RequestStatus::kQueued), 0);
  EXPECT_EQ(counts.at(RequestStatus::kApplied), 0);
  EXPECT_EQ(counts.at(RequestStatus::kCompleted), 1);
  EXPECT_EQ(counts.at(RequestStatus::kFailed), 1);
  EXPECT_EQ(to_string(RequestStatus::kApplied), "applied");
}

TEST(Ledger, IllegalTransitionsAreRefusedAndChangeNothing) {
  Ledger ledger(ledger_in("illegal"));
  const auto id = ledger.submit({"y1", "y2"}, std::nullopt, std::nullopt).request.id;

  auto message = error_of([&] { ledger.complete("del-ffffffffffffffff", kReceipt); });
  EXPECT_TRUE(contains(message, "no such request")) << message;
  EXPECT_TRUE(contains(error_of([&] { ledger.mark_applied(id, nlohmann::json::array()); }), "must be a JSON object"));
  EXPECT_TRUE(contains(error_of([&] { ledger.complete(id, nullptr); }), "must be a JSON object"));
  EXPECT_TRUE(contains(error_of([&] { ledger.fail(id, "", kReceipt); }), "needs a reason"));
  // A receipt naming a record or the subject in clear is refused, with where it was found.
  message = error_of([&] { ledger.complete(id, {{"models", {{{"erased", {"y2"}}}}}}); });
  EXPECT_TRUE(contains(message, "in clear at /models/0/erased/0")) << message;
  EXPECT_FALSE(contains(message, "y2")) << "the error itself must not repeat the id: " << message;
  EXPECT_TRUE(contains(error_of([&] { ledger.mark_applied(id, {{"y1", true}}); }), "/y1 (as a key)"));
  EXPECT_EQ(ledger.get(id)->status, RequestStatus::kQueued);

  ledger.complete(id, kReceipt);  // queued -> completed directly is allowed
  message = error_of([&] { ledger.complete(id, kReceipt); });
  EXPECT_TRUE(contains(message, "already completed")) << message;
  EXPECT_TRUE(contains(message, "twice is refused")) << message;
  EXPECT_TRUE(contains(error_of([&] { ledger.mark_applied(id, kReceipt); }), "only a queued request can be marked applied"));
  EXPECT_TRUE(contains(error_of([&] { ledger.fail(id, "late", kReceipt); }), "already completed, a final status"));

  const auto other = ledger.submit({"y3"}, std::nullopt, std::nullopt).request.id;
  ledger.mark_applied(other, kReceipt);
  EXPECT_TRUE(contains(error_of([&] { ledger.mark_applied(other, kReceipt); }), "it is applied"));
  ledger.fail(other, "routing failed", kReceipt);
  EXPECT_TRUE(contains(error_of([&] { ledger.fail(other, "again", kReceipt); }), "already failed"));
  EXPECT_TRUE(contains(error_of([&] { ledger.complete(other, kReceipt); }), "already failed, a final status"));
  EXPECT_EQ(ledger.get(other)->error, "routing failed");
  EXPECT_EQ(ledger.get(id)->receipt, kReceipt);
}

// ---- durability: a child process acknowledges through a pipe and is killed ----

// Writes all of `line` to `fd` (a short write to a pipe is atomic, so a line is never torn).
void write_line(int fd, const std::string& line) {
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(4);
}

// Reads lines from `fd` until `wanted` lines arrived or EOF.
std::vector<std::string> read_lines(int fd, std::size_t wanted, std::string& partial) {
  std::vector<std::string> lines;
  char buffer[4096];
  while (lines.size() < wanted) {
    const auto n = ::read(fd, buffer, sizeof buffer);
    if (n <= 0) break;
    partial.append(buffer, static_cast<std::size_t>(n));
    for (auto end = partial.find('\n'); end != std::string::npos; end = partial.find('\n')) {
      lines.push_back(partial.substr(0, end));
      partial.erase(0, end + 1);
    }
  }
  return lines;
}

// A child process that runs `body(write_fd)` and exits; the parent gets its pid and the pipe's
// read end. Whatever `body` throws ends the child with status 3 (the parent sees it wasn't killed).
struct Child {
  pid_t pid;
  int read_fd;
};
template <typename Body>
Child fork_acknowledging_child(Body&& body) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    ::close(pipe_fds[0]);
    try {
      body(pipe_fds[1]);
    } catch (...) {
    }
    ::_exit(3);
  }
  ::close(pipe_fds[1]);
  return {pid, pipe_fds[0]};
}

TEST(Ledger, AcknowledgedRequestSurvivesSigkillRightAfterSubmit) {
  const auto path = ledger_in("sigkill_each");
  std::vector<std::pair<std::string, std::string>> acknowledged;  // request id, record id
  for (int round = 0; round < 5; ++round) {
    const auto child = fork_acknowledging_child([&](int write_fd) {
      Ledger ledger(path);
      const std::string record = "round-" + std::to_string(round);
      const auto result = ledger.submit({record}, std::nullopt, "key-" + std::to_string(round));
      write_line(write_fd, result.request.id + " " + record + "\n");
      ::raise(SIGKILL);  // no destructor, no checkpoint, no clean close
    });
    std::string partial;
    const auto lines = read_lines(child.read_fd, 1, partial);
    ::close(child.read_fd);
    int status = 0;
    ASSERT_EQ(::waitpid(child.pid, &status, 0), child.pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child failed before it was killed";
    ASSERT_EQ(lines.size(), 1u);
    const auto space = lines[0].find(' ');
    acknowledged.emplace_back(lines[0].substr(0, space), lines[0].substr(space + 1));

    Ledger reopened(path);
    for (const auto& [id, record] : acknowledged) {
      const auto request = reopened.get(id);
      ASSERT_TRUE(request.has_value()) << "acknowledged request " << id << " lost after SIGKILL (round " << round << ")";
      EXPECT_EQ(request->record_ids, std::vector<std::string>{record});
      EXPECT_EQ(request->status, RequestStatus::kQueued);
    }
    EXPECT_EQ(reopened.unfinished().size(), acknowledged.size());
  }
}

TEST(Ledger, AcknowledgedRequestsSurviveSigkillInTheMiddleOfABurst) {
  const auto path = ledger_in("sigkill_burst");
  const auto child = fork_acknowledging_child([&](int write_fd) {
    Ledger ledger(path);
    for (int i = 0; i < 100000; ++i) {
      const std::string record = "burst-" + std::to_string(i);
      const auto result = i % 3 == 0 ? ledger.submit({}, record, std::nullopt)
                                     : ledger.submit({record, record + "-b"}, std::nullopt, "k" + std::to_string(i));
      write_line(write_fd, result.request.id + " " + record + "\n");
    }
  });
  std::string partial;
  auto lines = read_lines(child.read_fd, 40, partial);
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child.pid, &status, 0), child.pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child ended before it was killed";
  // Acknowledgements already in the pipe when the child died count too.
  for (auto& line : read_lines(child.read_fd, SIZE_MAX, partial)) lines.push_back(std::move(line));
  ::close(child.read_fd);
  ASSERT_GE(lines.size(), 40u);
  EXPECT_TRUE(partial.empty()) << "a torn acknowledgement: " << partial;

  Ledger reopened(path);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const auto space = lines[i].find(' ');
    const auto id = lines[i].substr(0, space);
    const auto record = lines[i].substr(space + 1);
    ASSERT_EQ(record, "burst-" + std::to_string(i));
    const auto request = reopened.get(id);
    ASSERT_TRUE(request.has_value()) << "acknowledged request " << id << " (" << record << ") lost after SIGKILL";
    if (i % 3 == 0) {
      EXPECT_EQ(request->subject, std::optional<std::string>(record));
    } else {
      EXPECT_EQ(request->record_ids, (std::vector<std::string>{record, record + "-b"}));
      EXPECT_EQ(request->idempotency_key, std::optional<std::string>("k" + std::to_string(i)));
    }
  }
  // At most the one request in flight at the kill is there without an acknowledgement.
  const auto pending = reopened.unfinished();
  ASSERT_GE(pending.size(), lines.size());
  EXPECT_LE(pending.size(), lines.size() + 1);
  for (std::size_t i = 0; i < lines.size(); ++i) EXPECT_EQ(pending[i].id, lines[i].substr(0, lines[i].find(' ')));
  std::cout << "[ burst    ] " << lines.size() << " requests acknowledged before SIGKILL, all found\n";
}

// ---- no clear value survives in the files ----

TEST(Ledger, NoClearRecordIdOrSubjectSurvivesInAnyFileAfterCompleteAndScrub) {
  const auto path = ledger_in("scrub");
  Ledger ledger(path);
  // Values that cannot occur by chance in the file (hashes are lowercase hex).
  std::vector<std::string> finished_values;
  std::vector<std::string> big;
  for (int i = 0; i < 3000; ++i) big.push_back("ZQ-FINISHED-RECORD-" + std::to_string(i));
  const auto big_id = ledger.submit(big, std::nullopt, std::string("ZQ-FINISHED-KEY-big")).request.id;
  finished_values.insert(finished_values.end(), big.begin(), big.end());
  finished_values.push_back("ZQ-FINISHED-KEY-big");
  const auto subject_id = ledger.submit({}, std::string("ZQ-FINISHED-SUBJECT-carol"), std::nullopt).request.id;
  finished_values.push_back("ZQ-FINISHED-SUBJECT-carol");
  const auto failed_id = ledger.submit({"ZQ-FINISHED-FAILED-1", "ZQ-FINISHED-FAILED-2"}, std::nullopt, std::nullopt).request.id;
  finished_values.push_back("ZQ-FINISHED-FAILED-1");
  finished_values.push_back("ZQ-FINISHED-FAILED-2");
  const auto pending_id = ledger.submit({"ZQ-PENDING-RECORD-1"}, std::nullopt, std::nullopt).request.id;
  ledger.scrub();  // the pages now hold the clear values in the database file itself, not only in the WAL

  // Control: the scan sees clear values where they are.
  auto bytes = database_bytes(path);
  for (const auto& value : finished_values) ASSERT_TRUE(contains(bytes, value)) << "scan control: " << value;

  ledger.mark_applied(big_id, {{"route", "slice-deactivation"}});
  ledger.complete(big_id, {{"records_erased", ledger.hash_id(big[0])}});
  ledger.complete(subject_id, kReceipt);
  ledger.fail(failed_id, "routing failed", kReceipt);
  ledger.scrub();

  bytes = database_bytes(path);
  std::size_t survivors = 0;
  for (const auto& value : finished_values) {
    if (contains(bytes, value)) {
      ++survivors;
      if (survivors <= 5) ADD_FAILURE() << "clear value survives in the ledger files: " << value;
    }
  }
  EXPECT_EQ(survivors, 0u) << "of " << finished_values.size();
  EXPECT_TRUE(contains(bytes, "ZQ-PENDING-RECORD-1")) << "an unfinished request keeps its ids for the replay";
  EXPECT_TRUE(contains(bytes, ledger.hash_id(big[2999]))) << "the salted hashes stay";
  EXPECT_EQ(fs::file_size(fs::path(path.string() + "-wal")), 0u);
  EXPECT_EQ(ledger.get(pending_id)->record_ids, std::vector<std::string>{"ZQ-PENDING-RECORD-1"});
  EXPECT_EQ(ledger.get(big_id)->record_hashes.size(), 3000u);
}

TEST(Ledger, FilesArePrivateToTheOwner) {
  const auto path = ledger_in("mode");
  Ledger ledger(path);
  (void)ledger.submit({"m1"}, std::nullopt, std::nullopt);
  for (const auto* suffix : {"", "-wal", "-shm"}) {
    struct stat info {};
    ASSERT_EQ(::stat((path.string() + suffix).c_str(), &info), 0) << suffix;
    EXPECT_EQ(info.st_mode & 0777, 0600u) << path.string() + suffix;
  }
}

// ---- salt, pragmas, foreign files ----

TEST(Ledger, HashIdIsStableAcrossReopenAndDiffersAcrossLedgers) {
  const auto path = ledger_in("hash_a");
  std::string first;
  {
    Ledger ledger(path);
    first = ledger.hash_id("train-00042");
    EXPECT_EQ(first.size(), 64u);
    EXPECT_EQ(first.find_first_not_of("0123456789abcdef"), std::string::npos);
    EXPECT_NE(ledger.hash_id("train-00043"), first);
  }
  Ledger reopened(path);
  EXPECT_EQ(reopened.hash_id("train-00042"), first);
  Ledger other(ledger_in("hash_b"));
  EXPECT_NE(other.hash_id("train-00042"), first);
}

TEST(Ledger, PragmasAreInEffect) {
  const auto path = ledger_in("pragmas");
  {
    Ledger ledger(path);
    const auto settings = ledger.settings();
    EXPECT_EQ(settings.journal_mode, "wal");
    EXPECT_EQ(settings.synchronous, 2);  // FULL
    EXPECT_TRUE(settings.secure_delete);
    EXPECT_TRUE(settings.foreign_keys);
    EXPECT_GE(settings.busy_timeout_ms, 1000);
    EXPECT_EQ(settings.schema_version, Ledger::kSchemaVersion);
  }
  Ledger reopened(path);  // per-connection settings are set again on every open
  EXPECT_EQ(reopened.settings().synchronous, 2);
  EXPECT_TRUE(reopened.settings().secure_delete);
  // WAL is a property of the file: another program sees it too.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &stmt, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0)), "wal");
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST(Ledger, GarbageFileIsRefusedAndLeftUntouched) {
  // The 1-byte file matters: SQLite itself reads a file shorter than a page as an empty database.
  for (const std::string& garbage : {std::string("x"), "this is a CSV file, not a ledger\n" + std::string(5000, 'x'),
                                     std::string("SQLite format 3\0", 16) + std::string(200, '\x7f')}) {
    const auto path = ledger_in("garbage");
    std::ofstream(path, std::ios::binary) << garbage;
    const auto message = error_of([&] { Ledger ledger(path); });
    EXPECT_TRUE(contains(message, path.string())) << message;
    EXPECT_TRUE(contains(message, "not a SQLite database")) << message;
    EXPECT_TRUE(contains(message, "move it aside")) << message;
    EXPECT_EQ(scratch::read_bytes(path), garbage);
    EXPECT_FALSE(fs::exists(path.string() + "-wal"));
  }
}

TEST(Ledger, EmptyFileBecomesALedger) {
  const auto path = ledger_in("empty");
  std::ofstream(path, std::ios::binary).flush();
  Ledger ledger(path);
  EXPECT_TRUE(ledger.submit({"e1"}, std::nullopt, std::nullopt).created);
  EXPECT_EQ(ledger.settings().schema_version, Ledger::kSchemaVersion);
}

TEST(Ledger, OtherSqliteDatabaseIsRefused) {
  const auto path = ledger_in("foreign");
  raw_sql(path, "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)");
  auto message = error_of([&] { Ledger ledger(path); });
  EXPECT_TRUE(contains(message, "not a Lethe deletion ledger (it has no meta table)")) << message;
  EXPECT_TRUE(contains(message, path.string())) << message;
  raw_sql(path, "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB); INSERT INTO meta VALUES ('format', 'other-app')");
  message = error_of([&] { Ledger ledger(path); });
  EXPECT_TRUE(contains(message, "not a Lethe deletion ledger (its meta table has no format")) << message;
}

TEST(Ledger, NewerSchemaVersionIsRefused) {
  const auto path = ledger_in("newer");
  { Ledger ledger(path); }
  raw_sql(path, "UPDATE meta SET value = '3' WHERE key = 'schema_version'");
  const auto message = error_of([&] { Ledger ledger(path); });
  EXPECT_TRUE(contains(message, path.string())) << message;
  EXPECT_TRUE(contains(message, "newer Lethe (ledger schema version 3; this build reads up to 2)")) << message;
  raw_sql(path, "UPDATE meta SET value = '2' WHERE key = 'schema_version'");
  EXPECT_NO_THROW(Ledger ledger(path));
}

TEST(Ledger, MissingDirectoryIsAnError) {
  const auto path = ledger_in("missing_dir").parent_path() / "absent" / "ledger.sqlite";
  const auto message = error_of([&] { Ledger ledger(path); });
  EXPECT_TRUE(contains(message, "does not exist")) << message;
}

// ---- threads: HTTP threads submit while the worker finishes requests ----

TEST(Ledger, ConcurrentSubmitsAndCompletionsAreSafe) {
  Ledger ledger(ledger_in("threads"));
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  std::atomic<bool> submitting{true};
  std::vector<std::thread> submitters;
  std::vector<std::vector<std::string>> ids(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i)
        ids[t].push_back(ledger.submit({"t" + std::to_string(t) + "-" + std::to_string(i)}, std::nullopt, std::nullopt)
                             .request.id);
    });
  }
  std::size_t completed = 0;
  std::thread worker([&] {
    while (true) {
      const bool last_pass = !submitting.load();
      for (const auto& request : ledger.unfinished()) {
        ledger.complete(request.id, kReceipt);
        ++completed;
      }
      if (last_pass) break;
    }
  });
  for (auto& thread : submitters) thread.join();
  submitting = false;
  worker.join();
  std::set<std::string> distinct;
  for (const auto& list : ids) distinct.insert(list.begin(), list.end());
  EXPECT_EQ(distinct.size(), static_cast<std::size_t>(kThreads * kPerThread));
  EXPECT_EQ(completed, distinct.size());
  EXPECT_EQ(ledger.counts().at(RequestStatus::kCompleted), kThreads * kPerThread);
  EXPECT_TRUE(ledger.unfinished().empty());
}


// ---- loss and damage are noticed (issue 14, finding 4) ----

// The kind of the LedgerError `body` throws; fails the test when nothing is thrown.
template <typename Body>
StorageErrorKind error_kind_of(Body&& body, std::string* message = nullptr) {
  try {
    body();
  } catch (const LedgerError& e) {
    if (message) *message = e.what();
    return e.kind();
  }
  ADD_FAILURE() << "no LedgerError was thrown";
  return StorageErrorKind::kIo;
}

// A child that opens the ledger, submits `count` requests, reports their ids and is SIGKILLed: what a
// crashed service leaves behind. Returns the acknowledged request ids.
std::vector<std::string> crash_after_submitting(const fs::path& path, int count) {
  const auto child = fork_acknowledging_child([&](int write_fd) {
    Ledger ledger(path);
    for (int i = 0; i < count; ++i) {
      write_line(write_fd, ledger.submit({"lost-" + std::to_string(i)}, std::nullopt, std::nullopt).request.id + "\n");
    }
    ::raise(SIGKILL);
  });
  std::string partial;
  auto lines = read_lines(child.read_fd, static_cast<std::size_t>(count), partial);
  ::close(child.read_fd);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status)) << "the child failed before it was killed";
  return lines;
}

TEST(Ledger, ANewLedgersSaltIsInTheDatabaseFileNotOnlyInTheWal) {
  const auto path = ledger_in("salt_in_file");
  std::string salt_hash;
  const auto child = fork_acknowledging_child([&](int write_fd) {
    Ledger ledger(path);
    write_line(write_fd, ledger.hash_id("x") + "\n");
    ::raise(SIGKILL);
  });
  std::string partial;
  const auto lines = read_lines(child.read_fd, 1, partial);
  ::close(child.read_fd);
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  ASSERT_EQ(lines.size(), 1u);
  // Nothing was acknowledged, so losing the WAL now loses nothing: the salt must survive it.
  fs::remove(path.string() + "-wal");
  fs::remove(path.string() + "-shm");
  Ledger reopened(path, Ledger::Access::kReadWrite, Ledger::LostLog::kAccept);
  EXPECT_EQ(reopened.hash_id("x"), lines[0]);
}

TEST(Ledger, AWalRemovedAfterACrashIsRefusedUnlessTheLossIsAccepted) {
  const auto path = ledger_in("wal_removed");
  const auto acknowledged = crash_after_submitting(path, 5);
  ASSERT_EQ(acknowledged.size(), 5u);
  ASSERT_TRUE(fs::exists(path.string() + "-wal"));
  fs::remove(path.string() + "-wal");
  std::string message;
  EXPECT_EQ(error_kind_of([&] { Ledger ledger(path); }, &message), StorageErrorKind::kDamaged);
  EXPECT_TRUE(contains(message, path.string() + "-wal is missing")) << message;
  EXPECT_TRUE(contains(message, "--accept-ledger-loss")) << message;
  // Refusing changed nothing: the same refusal again.
  EXPECT_EQ(error_kind_of([&] { Ledger ledger(path); }), StorageErrorKind::kDamaged);
  {
    Ledger accepted(path, Ledger::Access::kReadWrite, Ledger::LostLog::kAccept);
    (void)accepted.submit({"after"}, std::nullopt, std::nullopt);
  }
  Ledger reopened(path);  // the loss is recorded; a clean close leaves nothing to refuse
  EXPECT_EQ(reopened.unfinished().size(), 1u);
}

TEST(Ledger, CleanCloseKeepsTheWalFileAndCrashRecoveryNeedsNoFlag) {
  const auto path = ledger_in("clean_close");
  {
    Ledger ledger(path);
    (void)ledger.submit({"a"}, std::nullopt, std::nullopt);
  }
  EXPECT_TRUE(fs::exists(path.string() + "-wal")) << "the WAL file must persist so that its removal is noticed";
  EXPECT_EQ(fs::file_size(path.string() + "-wal"), 0u) << "emptied at close";
  // A clean close, then the (empty) WAL removed: nothing was lost, nothing is refused.
  fs::remove(path.string() + "-wal");
  {
    Ledger reopened(path);
    EXPECT_EQ(reopened.unfinished().size(), 1u);
  }
  // A crash with the WAL left in place: recovered as always, every acknowledged request there.
  const auto acknowledged = crash_after_submitting(path, 3);
  Ledger recovered(path);
  for (const auto& id : acknowledged) EXPECT_TRUE(recovered.get(id).has_value()) << id;
  EXPECT_EQ(recovered.unfinished().size(), 4u);
}

TEST(Ledger, AFlippedSaltByteIsFound) {
  const auto path = ledger_in("salt_flip");
  { Ledger ledger(path); }
  raw_sql(path, "UPDATE meta SET value = CAST(zeroblob(32) AS BLOB) WHERE key = 'salt'");
  std::string message;
  EXPECT_EQ(error_kind_of([&] { Ledger ledger(path); }, &message), StorageErrorKind::kDamaged);
  EXPECT_TRUE(contains(message, "salt does not match")) << message;
  EXPECT_TRUE(contains(message, "restore it from a backup")) << message;
}

TEST(Ledger, AFlippedReceiptByteIsFoundWhenTheReceiptIsRead) {
  const auto path = ledger_in("receipt_flip");
  std::string id;
  {
    Ledger ledger(path);
    id = ledger.submit({"r1"}, std::nullopt, std::nullopt).request.id;
    ledger.complete(id, {{"records_erased", 1}, {"model_version", 7}});
    EXPECT_EQ(ledger.get(id)->receipt.at("model_version"), 7);
  }
  // Still valid JSON, one digit changed: only the digest can tell.
  raw_sql(path, "UPDATE requests SET receipt = replace(receipt, '7', '8')");
  Ledger reopened(path);
  std::string message;
  EXPECT_EQ(error_kind_of([&] { (void)reopened.get(id); }, &message), StorageErrorKind::kDamaged);
  EXPECT_TRUE(contains(message, "receipt of request " + id + " does not match its digest")) << message;
}

TEST(Ledger, ADamagedFileIsRefusedAtOpenNotAtTheFirstWrite) {
  const auto path = ledger_in("page_flip");
  {
    Ledger ledger(path);
    for (int i = 0; i < 200; ++i) (void)ledger.submit({"p-" + std::to_string(i)}, std::nullopt, std::nullopt);
  }
  fs::remove(path.string() + "-wal");  // clean close: checkpointed, nothing in it
  // Scribble over the second page (a b-tree page of the schema's tables) as a failing disk would.
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(4096 + 8);
    const std::string garbage(64, '\xee');
    file.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  std::string message;
  EXPECT_EQ(error_kind_of([&] { Ledger ledger(path); }, &message), StorageErrorKind::kDamaged) << message;
  EXPECT_TRUE(contains(message, path.string())) << message;
}

TEST(Ledger, AFlippedHeaderByteIsRefusedAtOpen) {
  const auto path = ledger_in("header_flip");
  {
    Ledger ledger(path);
    for (int i = 0; i < 50; ++i) (void)ledger.submit({"h-" + std::to_string(i)}, std::nullopt, std::nullopt);
  }
  const auto original = scratch::read_bytes(path);
  // Page size, reserved bytes, payload fraction, database size, first freelist page: each makes the
  // file unreadable or inconsistent, which must surface at open, not at the first POST.
  for (const std::size_t offset : {16u, 20u, 21u, 28u, 32u}) {
    auto bytes = original;
    bytes[offset] = static_cast<char>(bytes[offset] ^ 0xff);
    std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    fs::remove(path.string() + "-wal");
    fs::remove(path.string() + "-shm");
    std::string message;
    EXPECT_EQ(error_kind_of([&] { Ledger ledger(path); }, &message), StorageErrorKind::kDamaged)
        << "header byte " << offset << ": " << message;
  }
}

TEST(Ledger, AVersion1LedgerIsUpgradedWithDigestsForItsReceipts) {
  const auto path = ledger_in("upgrade");
  std::string id;
  {
    Ledger ledger(path);
    id = ledger.submit({"u1"}, std::nullopt, std::nullopt).request.id;
    ledger.complete(id, kReceipt);
  }
  // What Lethe before schema version 2 wrote: no digest column, no salt digest.
  raw_sql(path, "ALTER TABLE requests DROP COLUMN receipt_digest; DELETE FROM meta WHERE key = 'salt_sha256'; "
                "UPDATE meta SET value = '1' WHERE key = 'schema_version'");
  {
    Ledger read_only(path, Ledger::Access::kReadOnly);
    EXPECT_EQ(read_only.get(id)->receipt, kReceipt);
    EXPECT_EQ(read_only.settings().schema_version, 1) << "a reader changes nothing";
  }
  Ledger upgraded(path);
  EXPECT_EQ(upgraded.settings().schema_version, 2);
  EXPECT_EQ(upgraded.get(id)->receipt, kReceipt);
}

}  // namespace
}  // namespace lethe::storage
