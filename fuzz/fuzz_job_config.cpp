// fuzz/fuzz_job_config.cpp — any bytes as the YAML text of a job config through
// lethe::launch::parse_job_config (launch/job_config.cpp), with the trainer's settings validation it
// calls (trainer/job_settings.cpp, model_config.cpp, s3t_plan.cpp, accountant.cpp: none needs torch,
// so they are compiled in as they are). The origin is a fixed path; nothing is read from disk.
// Expected: a JobConfig or launch::ConfigError. Findings: a crash, a sanitizer report, a hang
// (-timeout), or any other exception (`lethe validate|train` would print it without naming the key).
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz/fuzz_support.h"
#include "launch/job_config.h"

using lethe::fuzz::describe_current_exception;
using lethe::fuzz::finding;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = lethe::launch::parse_job_config(text, "/fuzz/job.yaml");
    (void)config;
  } catch (const lethe::launch::ConfigError&) {
  } catch (...) {
    finding("parse_job_config threw " + describe_current_exception());
  }
  return 0;
}
