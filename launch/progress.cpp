#include "launch/progress.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "launch/logging.h"

namespace lethe::launch {

namespace {

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, value >= 100 ? "%.0f" : "%.1f", value);
  return text;
}

}  // namespace

std::string format_progress(const std::string& label, std::int64_t done, std::int64_t total, const std::string& unit,
                            double elapsed_s) {
  std::string out = label + ": " + std::to_string(done) + (total > 0 ? "/" + std::to_string(total) : "") + " " + unit;
  if (elapsed_s <= 0 || done <= 0) return out;
  const double rate = static_cast<double>(done) / elapsed_s;
  out += ", " + number(rate) + " " + unit + "/s";
  if (total > 0 && done < total) {
    out += ", ETA " + std::to_string(static_cast<std::int64_t>(std::ceil(static_cast<double>(total - done) / rate))) + " s";
  }
  if (total > 0 && done >= total) out += ", " + number(elapsed_s) + " s";
  return out;
}

ProgressReporter::ProgressReporter(Mode mode, Writer write, Clock clock, double interval_s)
    : mode_(mode), write_(std::move(write)), clock_(std::move(clock)), interval_s_(interval_s) {}

void ProgressReporter::begin(const std::string& label, std::int64_t total, const std::string& unit) {
  const std::lock_guard lock(mutex_);
  if (depth_++ > 0) return;
  label_ = label;
  unit_ = unit;
  total_ = total;
  done_ = 0;
  start_ = last_report_ = clock_();
}

void ProgressReporter::advance(std::int64_t units) {
  const std::lock_guard lock(mutex_);
  if (depth_ != 1) return;  // nested tasks count toward nothing shown
  done_ += units;
  const double now = clock_();
  if (now - last_report_ >= (mode_ == Mode::kBar ? 0.1 : interval_s_)) report(false);
}

void ProgressReporter::end() {
  const std::lock_guard lock(mutex_);
  if (depth_ == 0 || --depth_ > 0) return;
  report(true);
}

void ProgressReporter::report(bool final) {
  const double now = clock_();
  last_report_ = now;
  const auto text = format_progress(label_, done_, total_, unit_, now - start_);
  if (mode_ == Mode::kLines) {
    write_(text);
    return;
  }
  constexpr int kWidth = 30;
  const int filled = total_ > 0 ? static_cast<int>(kWidth * std::min(1.0, static_cast<double>(done_) / static_cast<double>(total_))) : 0;
  write_("\r[" + std::string(static_cast<std::size_t>(filled), '#') + std::string(static_cast<std::size_t>(kWidth - filled), '.') +
         "] " + text + "\x1b[K" + (final ? "\n" : ""));
}

void install_progress_reporter() {
  const auto clock = [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  };
  static std::unique_ptr<ProgressReporter> reporter;
  if (isatty(STDERR_FILENO) && !under_mpi_launcher()) {
    reporter = std::make_unique<ProgressReporter>(
        ProgressReporter::Mode::kBar, [](const std::string& text) { std::cerr << text << std::flush; }, clock);
  } else if (launcher_rank() == 0) {
    reporter = std::make_unique<ProgressReporter>(
        ProgressReporter::Mode::kLines, [](const std::string& text) { spdlog::info("{}", text); }, clock);
  } else {
    return;
  }
  storage::set_progress_sink(reporter.get());
}

}  // namespace lethe::launch
