// http/auth.h — the service's bearer token: read from a file that only its owner may
// read, and compared in constant time so that response timing reveals nothing about it.
#pragma once

#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>

namespace lethe::http {

// A token file that cannot be used: missing, unreadable, empty, or readable by group/others.
class TokenFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The token: the file's first line, surrounding whitespace removed. Refuses (TokenFileError
// naming the file and the fix) a file readable by group or others, a missing or empty one.
[[nodiscard]] std::string load_token_file(const std::filesystem::path& path);

// Equal contents, in time that depends only on the lengths.
[[nodiscard]] bool constant_time_equal(std::string_view a, std::string_view b);

// True when an Authorization header value is "Bearer <token>" for exactly `token`.
[[nodiscard]] bool bearer_matches(std::string_view authorization, std::string_view token);

}  // namespace lethe::http
