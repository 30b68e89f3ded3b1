// storage/progress.h — how long work (ingest, compaction, training, retraining) reports its progress
// without knowing where it goes: launch/ installs a terminal bar or periodic log lines; the default drops it.
#pragma once

#include <cstdint>
#include <string>

namespace lethe::storage {

class ProgressSink {
 public:
  virtual ~ProgressSink() = default;
  // A task of `total` units named `unit` ("records", "steps"); total 0 when unknown.
  virtual void begin(const std::string& label, std::int64_t total, const std::string& unit) = 0;
  virtual void advance(std::int64_t units) = 0;
  virtual void end() = 0;  // also after a failure: the task stops either way
};

// The process's sink: a null sink until set_progress_sink() installs one (launch/main.cpp does).
[[nodiscard]] ProgressSink& progress_sink();
// `sink` must outlive its use; nullptr restores the null sink.
void set_progress_sink(ProgressSink* sink);

// One task on the process's sink: begin() now, end() when it goes out of scope (exceptions included).
class ProgressTask {
 public:
  ProgressTask(const std::string& label, std::int64_t total, const std::string& unit);
  ~ProgressTask();
  ProgressTask(const ProgressTask&) = delete;
  ProgressTask& operator=(const ProgressTask&) = delete;
  void advance(std::int64_t units = 1) { sink_.advance(units); }

 private:
  ProgressSink& sink_;
};

}  // namespace lethe::storage
