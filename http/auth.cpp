#include "http/auth.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace lethe::http {

std::string load_token_file(const std::filesystem::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) {
    throw TokenFileError("token file " + path.string() + ": " + std::strerror(errno) +
                         "; create it with a random token, e.g. `umask 077; openssl rand -hex 32 > " + path.string() + "`");
  }
  if ((info.st_mode & (S_IRGRP | S_IROTH | S_IWGRP | S_IWOTH)) != 0) {
    throw TokenFileError("token file " + path.string() +
                         " is readable or writable by group or others; refusing to use it: `chmod 600 " + path.string() + "`");
  }
  std::ifstream in(path);
  std::string token;
  if (!in || !std::getline(in, token)) throw TokenFileError("token file " + path.string() + " cannot be read or is empty");
  const auto first = token.find_first_not_of(" \t\r");
  const auto last = token.find_last_not_of(" \t\r");
  token = first == std::string::npos ? std::string() : token.substr(first, last - first + 1);
  if (token.empty()) throw TokenFileError("token file " + path.string() + " holds no token on its first line");
  return token;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Lengths are not secret (a token's length is public in practice); contents are.
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return difference == 0;
}

bool bearer_matches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.size() < kScheme.size()) return false;
  // The scheme name is case-insensitive (RFC 9110 §11.1).
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    const char c = authorization[i];
    const char expected = kScheme[i];
    if ((c | 0x20) != (expected | 0x20)) return false;
  }
  return constant_time_equal(authorization.substr(kScheme.size()), token);
}

}  // namespace lethe::http
