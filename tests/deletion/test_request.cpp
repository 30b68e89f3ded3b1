// Deletion requests are parsed strictly and every error names its field.
#include <gtest/gtest.h>

#include "deletion/request.h"

namespace lethe::deletion {
namespace {

using nlohmann::json;

std::string field_of(const json& body) {
  try {
    (void)parse_deletion_request(body);
  } catch (const RequestError& e) {
    return e.field();
  }
  return "<accepted>";
}

TEST(DeletionRequest, ParsesRecordsKeepingFirstOccurrences) {
  const auto request = parse_deletion_request(json::parse(R"({"records": ["b", "a", "b"], "idempotency_key": "k1"})"));
  EXPECT_EQ(request.records, (std::vector<std::string>{"b", "a"}));
  EXPECT_FALSE(request.subject);
  EXPECT_EQ(request.idempotency_key.value_or(""), "k1");
  EXPECT_EQ(to_json(request), json::parse(R"({"records": ["b", "a"], "idempotency_key": "k1"})"));
}

TEST(DeletionRequest, ParsesSubject) {
  const auto request = parse_deletion_request(json::parse(R"({"subject": "user-7"})"));
  EXPECT_TRUE(request.records.empty());
  EXPECT_EQ(request.subject.value_or(""), "user-7");
  EXPECT_EQ(parse_deletion_request(to_json(request)).subject, request.subject);
}

TEST(DeletionRequest, ErrorsNameTheField) {
  EXPECT_EQ(field_of(json::array()), "body");
  EXPECT_EQ(field_of(json::object()), "records");
  EXPECT_EQ(field_of(json::parse(R"({"records": ["a"], "subject": "s"})")), "subject");
  EXPECT_EQ(field_of(json::parse(R"({"records": "a"})")), "records");
  EXPECT_EQ(field_of(json::parse(R"({"records": []})")), "records");
  EXPECT_EQ(field_of(json::parse(R"({"records": ["a", 7]})")), "records[1]");
  EXPECT_EQ(field_of(json::parse(R"({"records": ["a", ""]})")), "records[1]");
  EXPECT_EQ(field_of(json::parse(R"({"records": ["a\u0001"]})")), "records[0]");
  EXPECT_EQ(field_of(json::parse(R"({"subject": 3})")), "subject");
  EXPECT_EQ(field_of(json::parse(R"({"subject": "s", "idempotency_key": ""})")), "idempotency_key");
  EXPECT_EQ(field_of(json::parse(R"({"subject": "s", "subjects": "t"})")), "subjects");
  EXPECT_EQ(field_of(json{{"subject", std::string(kMaxIdLength + 1, 'x')}}), "subject");
  EXPECT_EQ(field_of(json{{"subject", std::string(kMaxIdLength, 'x')}}), "<accepted>");
}

TEST(DeletionRequest, RefusesTooManyRecords) {
  json records = json::array();
  for (std::size_t i = 0; i <= kMaxRecordsPerRequest; ++i) {
    std::string id = "r";  // appended, not "r" + ...: GCC 12 misreports a memcpy overflow there
    records.push_back(id += std::to_string(i));
  }
  EXPECT_EQ(field_of(json{{"records", records}}), "records");
  records.erase(records.begin());
  EXPECT_EQ(field_of(json{{"records", records}}), "<accepted>");
}

}  // namespace
}  // namespace lethe::deletion
