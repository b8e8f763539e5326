// The PostgreSQL server of the tests and a fresh database per test on it.
//
// Under ctest the `postgres` fixture (scripts/postgres-test-server.sh, wired in
// tests/server/CMakeLists.txt) starts a throwaway server and writes its URL to the file named by
// SLIM_TEST_POSTGRES_URL_FILE. By hand, SLIM_TEST_POSTGRES_URL names any server whose user may
// create databases. With neither variable, PostgreSQL cases skip; with the file variable set
// but no file, they fail (ctest never skips them silently).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace slim::server::pgtest {

// The server's URL (SLIM_TEST_POSTGRES_URL wins over the file); "" when neither variable is
// set; FAILED_PRECONDITION naming the file when SLIM_TEST_POSTGRES_URL_FILE is set but the file
// is missing or empty.
absl::StatusOr<std::string> PostgresServerUrl();

// `url` (a URI or key=value connection string) with its database replaced by `dbname`, as a
// key=value connection string.
std::string WithDatabase(const std::string& url, const std::string& dbname);

// A database named after the current test (plus `suffix`), created empty on the server when
// constructed (dropped first if a previous run left it) and dropped when destroyed. Throws
// (libpqxx) if the server cannot be used: a test error, reported by GoogleTest.
class TestDatabase {
 public:
  TestDatabase(std::string server_url, const std::string& suffix = "");
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;

  const std::string& name() const { return name_; }
  // The connection string of this database.
  const std::string& url() const { return url_; }
  // Runs `sql` on this database (autocommit); the first column of its first row, or "".
  std::string Query(const std::string& sql) const;
  // Runs `sql` on the server's own database (ALTER DATABASE, pg_terminate_backend).
  void Admin(const std::string& sql) const;
  // Closes every connection to this database but the caller's.
  void TerminateConnections() const;

 private:
  std::string server_url_;
  std::string name_;
  std::string url_;
};

}  // namespace slim::server::pgtest
