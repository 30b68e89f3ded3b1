// launch/progress.h — what the user sees of storage::ProgressSink tasks: a bar with rate and ETA on a
// terminal, or a log line every few seconds ("train: 12/64 steps, 3.1 steps/s, ETA 17 s") elsewhere.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "storage/progress.h"

namespace lethe::launch {

// "LABEL: DONE/TOTAL UNIT, RATE UNIT/s, ETA N s" (total 0: "LABEL: DONE UNIT, RATE UNIT/s"); the rate
// and ETA are left out until time has passed.
[[nodiscard]] std::string format_progress(const std::string& label, std::int64_t done, std::int64_t total,
                                          const std::string& unit, double elapsed_s);

class ProgressReporter final : public storage::ProgressSink {
 public:
  enum class Mode { kBar, kLines };
  using Clock = std::function<double()>;                 // seconds, monotonic
  using Writer = std::function<void(const std::string&)>;  // kBar: raw text; kLines: one log line

  // kLines writes a line at most every `interval_s` and one when a task ends; kBar redraws at most
  // every 0.1 s. Only the outermost task of nested ones is shown.
  ProgressReporter(Mode mode, Writer write, Clock clock, double interval_s = 5.0);

  void begin(const std::string& label, std::int64_t total, const std::string& unit) override;
  void advance(std::int64_t units) override;
  void end() override;

 private:
  void report(bool final);

  Mode mode_;
  Writer write_;
  Clock clock_;
  double interval_s_;
  std::mutex mutex_;
  int depth_ = 0;
  std::string label_, unit_;
  std::int64_t total_ = 0, done_ = 0;
  double start_ = 0, last_report_ = 0;
};

// The reporter `lethe` installs: a bar when stderr is a terminal and no MPI launcher started us, log
// lines (through spdlog) on rank 0 otherwise, nothing on other ranks. Lives until exit.
void install_progress_reporter();

}  // namespace lethe::launch
