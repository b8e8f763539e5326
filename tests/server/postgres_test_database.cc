#include "tests/server/postgres_test_database.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <pqxx/pqxx>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace slim::server::pgtest {

absl::StatusOr<std::string> PostgresServerUrl() {
  if (const char* url = std::getenv("SLIM_TEST_POSTGRES_URL"); url != nullptr && *url != '\0') return std::string(url);
  const char* file = std::getenv("SLIM_TEST_POSTGRES_URL_FILE");
  if (file == nullptr || *file == '\0') return std::string();
  std::ifstream in(file);
  std::string url;
  std::getline(in, url);
  url = std::string(absl::StripAsciiWhitespace(url));
  if (url.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("SLIM_TEST_POSTGRES_URL_FILE=", file,
                     " is missing or empty: the ctest fixture postgres_server_start (scripts/postgres-test-server.sh)"
                     " did not start a PostgreSQL server"));
  }
  return url;
}

std::string WithDatabase(const std::string& url, const std::string& dbname) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(url.c_str(), &error);
  EXPECT_NE(options, nullptr) << (error != nullptr ? error : "");
  PQfreemem(error);
  std::string result;
  auto add = [&](const char* key, const std::string& value) {
    result += absl::StrCat(result.empty() ? "" : " ", key, "='",
                           absl::StrReplaceAll(value, {{"\\", "\\\\"}, {"'", "\\'"}}), "'");
  };
  for (PQconninfoOption* o = options; o != nullptr && o->keyword != nullptr; ++o) {
    if (o->val != nullptr && std::string(o->keyword) != "dbname") add(o->keyword, o->val);
  }
  PQconninfoFree(options);
  add("dbname", dbname);
  return result;
}

TestDatabase::TestDatabase(std::string server_url, const std::string& suffix) : server_url_(std::move(server_url)) {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string full = absl::StrCat(info->test_suite_name(), ".", info->name(), suffix);
  std::string readable;
  for (char c : absl::AsciiStrToLower(full)) readable += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  // Unique even where truncation to PostgreSQL's 63 bytes would make two names equal.
  name_ = absl::StrCat("slim_", std::hash<std::string>{}(full) % 1000000000, "_", readable).substr(0, 63);
  pqxx::connection admin(server_url_);
  pqxx::nontransaction tx(admin);
  tx.exec("SET client_min_messages = warning");
  tx.exec(absl::StrCat("DROP DATABASE IF EXISTS ", tx.quote_name(name_), " WITH (FORCE)"));
  tx.exec(absl::StrCat("CREATE DATABASE ", tx.quote_name(name_)));
  url_ = WithDatabase(server_url_, name_);
}

TestDatabase::~TestDatabase() {
  try {
    pqxx::connection admin(server_url_);
    pqxx::nontransaction tx(admin);
    tx.exec(absl::StrCat("DROP DATABASE IF EXISTS ", tx.quote_name(name_), " WITH (FORCE)"));
  } catch (const std::exception& e) {
    ADD_FAILURE() << "dropping " << name_ << ": " << e.what();
  }
}

std::string TestDatabase::Query(const std::string& sql) const {
  pqxx::connection c(url_);
  pqxx::nontransaction tx(c);
  const pqxx::result r = tx.exec(sql);
  return r.empty() || r.columns() == 0 || r[0][0].is_null() ? "" : r[0][0].c_str();
}

void TestDatabase::Admin(const std::string& sql) const {
  pqxx::connection c(server_url_);
  pqxx::nontransaction tx(c);
  tx.exec(sql);
}

void TestDatabase::TerminateConnections() const {
  Admin(absl::StrCat("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '", name_,
                     "' AND pid <> pg_backend_pid()"));
}

}  // namespace slim::server::pgtest
