// The bearer token: file permissions enforced, exact constant-time comparison.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "http/auth.h"
#include "tests/storage/scratch_files.h"

namespace lethe::http {
namespace {

std::filesystem::path token_file(const std::string& name, const std::string& content, mode_t mode) {
  static const auto dir = storage::scratch::fresh_dir("http_auth", "tokens");
  const auto path = dir / name;
  std::ofstream(path, std::ios::trunc) << content;
  ::chmod(path.c_str(), mode);
  return path;
}

TEST(TokenFile, ReadsTheFirstLineTrimmed) {
  EXPECT_EQ(load_token_file(token_file("ok", "  s3cret-token \nsecond line\n", 0600)), "s3cret-token");
}

TEST(TokenFile, RefusesWorldOrGroupReadable) {
  for (const mode_t mode : {0644, 0640, 0604}) {
    const auto path = token_file("open", "s3cret\n", mode);
    try {
      (void)load_token_file(path);
      FAIL() << "accepted mode " << std::oct << mode;
    } catch (const TokenFileError& e) {
      EXPECT_NE(std::string(e.what()).find("chmod 600"), std::string::npos) << e.what();
    }
  }
}

TEST(TokenFile, RefusesMissingAndEmpty) {
  EXPECT_THROW((void)load_token_file("/nonexistent/lethe/token"), TokenFileError);
  EXPECT_THROW((void)load_token_file(token_file("empty", "", 0600)), TokenFileError);
  EXPECT_THROW((void)load_token_file(token_file("blank", "   \n", 0600)), TokenFileError);
}

TEST(BearerToken, MatchesOnlyTheExactToken) {
  EXPECT_TRUE(bearer_matches("Bearer abc123", "abc123"));
  EXPECT_TRUE(bearer_matches("bearer abc123", "abc123"));
  EXPECT_FALSE(bearer_matches("Bearer abc124", "abc123"));
  EXPECT_FALSE(bearer_matches("Bearer abc1234", "abc123"));
  EXPECT_FALSE(bearer_matches("Bearer abc12", "abc123"));
  EXPECT_FALSE(bearer_matches("Basic abc123", "abc123"));
  EXPECT_FALSE(bearer_matches("abc123", "abc123"));
  EXPECT_FALSE(bearer_matches("", "abc123"));
}

TEST(BearerToken, ConstantTimeEqualComparesContents) {
  EXPECT_TRUE(constant_time_equal("", ""));
  EXPECT_TRUE(constant_time_equal("same", "same"));
  EXPECT_FALSE(constant_time_equal("same", "sane"));
  EXPECT_FALSE(constant_time_equal("same", "same "));
}

}  // namespace
}  // namespace lethe::http
