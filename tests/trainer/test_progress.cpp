// launch/progress.h: the progress text (rate, ETA), the log-line mode's pacing and the bar, on a
// clock the test sets (no sleeps); and storage::ProgressTask reaching the installed sink.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "launch/progress.h"
#include "storage/progress.h"

namespace {

using lethe::launch::format_progress;
using lethe::launch::ProgressReporter;

TEST(ProgressFormat, RateAndEta) {
  EXPECT_EQ(format_progress("train", 12, 64, "steps", 4.0), "train: 12/64 steps, 3.0 steps/s, ETA 18 s");
  EXPECT_EQ(format_progress("ingest", 0, 100, "records", 0.0), "ingest: 0/100 records");
  EXPECT_EQ(format_progress("ingest", 250, 0, "records", 2.0), "ingest: 250 records, 125 records/s");  // total unknown
  EXPECT_EQ(format_progress("s3t", 64, 64, "steps", 20.5), "s3t: 64/64 steps, 3.1 steps/s, 20.5 s");
  EXPECT_EQ(format_progress("s3t", 1, 3, "steps", 10.0), "s3t: 1/3 steps, 0.1 steps/s, ETA 20 s");
}

class ProgressLines : public ::testing::Test {
 protected:
  double now_ = 100.0;
  std::vector<std::string> lines_;
  ProgressReporter lines_reporter(double interval_s) {
    return ProgressReporter(
        ProgressReporter::Mode::kLines, [this](const std::string& line) { lines_.push_back(line); },
        [this] { return now_; }, interval_s);
  }
};

TEST_F(ProgressLines, OneLineEveryIntervalAndOneAtTheEnd) {
  auto reporter = lines_reporter(5.0);
  reporter.begin("train", 64, "steps");
  now_ += 2.0;
  reporter.advance(6);  // 2 s in: too soon for a line
  EXPECT_TRUE(lines_.empty());
  now_ += 2.0;
  reporter.advance(6);  // 4 s in
  EXPECT_TRUE(lines_.empty());
  now_ += 1.0;
  reporter.advance(3);  // 5 s in: a line
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_EQ(lines_[0], "train: 15/64 steps, 3.0 steps/s, ETA 17 s");
  now_ += 1.0;
  reporter.advance(1);  // 1 s after the last line
  EXPECT_EQ(lines_.size(), 1u);
  now_ += 10.0;
  reporter.advance(48);
  reporter.end();
  ASSERT_EQ(lines_.size(), 3u);
  EXPECT_EQ(lines_[2], "train: 64/64 steps, 4.0 steps/s, 16.0 s");
}

TEST_F(ProgressLines, NestedTasksShowTheOuterOneOnly) {
  auto reporter = lines_reporter(1.0);
  reporter.begin("retrain", 10, "steps");
  reporter.begin("noisy-gd", 1000, "steps");
  now_ += 5.0;
  reporter.advance(1000);
  reporter.end();
  EXPECT_TRUE(lines_.empty());
  reporter.advance(10);
  ASSERT_EQ(lines_.size(), 1u);
  EXPECT_EQ(lines_[0], "retrain: 10/10 steps, 2.0 steps/s, 5.0 s");
  reporter.end();
  EXPECT_EQ(lines_.size(), 2u);
  reporter.end();  // an unmatched end changes nothing
  EXPECT_EQ(lines_.size(), 2u);
}

TEST(ProgressBar, DrawsOnOneLineAndEndsIt) {
  double now = 0;
  std::string screen;
  ProgressReporter bar(ProgressReporter::Mode::kBar, [&](const std::string& text) { screen += text; }, [&] { return now; });
  bar.begin("compact", 10, "records");
  now = 1.0;
  bar.advance(5);
  EXPECT_EQ(screen, "\r[###############...............] compact: 5/10 records, 5.0 records/s, ETA 1 s\x1b[K");
  screen.clear();
  now = 1.05;
  bar.advance(1);  // within 0.1 s of the last draw
  EXPECT_TRUE(screen.empty());
  now = 2.0;
  bar.advance(4);
  bar.end();
  EXPECT_EQ(screen.substr(screen.rfind('\r')), "\r[##############################] compact: 10/10 records, 5.0 records/s, 2.0 s\x1b[K\n");
}

TEST(ProgressTask, ReportsToTheInstalledSinkAndEndsOnExceptions) {
  double now = 0;
  std::vector<std::string> lines;
  ProgressReporter reporter(ProgressReporter::Mode::kLines, [&](const std::string& line) { lines.push_back(line); },
                            [&] { return now; }, 1.0);
  lethe::storage::set_progress_sink(&reporter);
  try {
    lethe::storage::ProgressTask task("ingest", 4, "records");
    now = 2.0;
    task.advance(2);
    throw std::runtime_error("bad record");
  } catch (const std::runtime_error&) {
  }
  lethe::storage::set_progress_sink(nullptr);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "ingest: 2/4 records, 1.0 records/s, ETA 2 s");
  EXPECT_EQ(lines[1], "ingest: 2/4 records, 1.0 records/s, ETA 2 s");  // the end after the failure
  lethe::storage::ProgressTask ignored("nothing", 1, "steps");  // the null sink again: no line
  ignored.advance(1);
  EXPECT_EQ(lines.size(), 2u);
}

}  // namespace
