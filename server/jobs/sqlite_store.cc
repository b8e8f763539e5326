#include "server/jobs/sqlite_store.h"

#include <sys/stat.h>

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/common/status_macros.h"
#include "server/jobs/store_helpers.h"

namespace slim::server {
namespace {

using store_helpers::CheckEnded;
using store_helpers::CheckId;
using store_helpers::CheckPageSize;
using store_helpers::ParsePageToken;
using store_helpers::Serialize;
using store_helpers::StateFilter;

template <typename T>
absl::StatusOr<T> Parse(absl::string_view data, absl::string_view noun) {
  return store_helpers::Parse<T>(data, "sqlite", noun);
}

constexpr int kBusyTimeoutMs = 5000;

// Table names and the nouns used in messages; only these constants are ever spliced into SQL.
constexpr char kJobs[] = "jobs";
constexpr char kDatasets[] = "datasets";
constexpr char kModels[] = "models";

constexpr char kSchema[] = R"sql(
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  last_sequence INTEGER NOT NULL,
  data BLOB NOT NULL,
  tenant TEXT NOT NULL DEFAULT '',
  request_id TEXT
);
CREATE INDEX jobs_by_state ON jobs(state, seq);
CREATE INDEX jobs_by_tenant ON jobs(tenant, seq);
CREATE UNIQUE INDEX jobs_by_request ON jobs(tenant, request_id) WHERE request_id IS NOT NULL;
CREATE TABLE events (
  job_id TEXT NOT NULL REFERENCES jobs(id),
  sequence INTEGER NOT NULL,
  data BLOB NOT NULL,
  PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
CREATE TABLE datasets (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  data BLOB NOT NULL,
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX datasets_by_tenant ON datasets(tenant, seq);
CREATE TABLE models (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  data BLOB NOT NULL,
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX models_by_tenant ON models(tenant, seq);
CREATE TABLE counters (
  prefix TEXT PRIMARY KEY,
  next INTEGER NOT NULL
);
)sql";

// Version 1 had no tenant columns; UpgradeFrom1 fills them from the records after this.
constexpr char kUpgradeFrom1[] = R"sql(
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_tenant ON jobs(tenant, seq);
ALTER TABLE datasets ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX datasets_by_tenant ON datasets(tenant, seq);
ALTER TABLE models ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX models_by_tenant ON models(tenant, seq);
)sql";

// Version 2 → 3: CreateJob's request ids (idempotent retries).
constexpr char kUpgradeFrom2[] = R"sql(
ALTER TABLE jobs ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX jobs_by_request ON jobs(tenant, request_id) WHERE request_id IS NOT NULL;
)sql";

absl::Status SqliteError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat("sqlite: ", what, ": ", sqlite3_errmsg(db)));
}

// A prepared statement, finalized on destruction. Bind errors are kept and reported by the
// next Step, so call sites stay a flat list of binds.
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, const std::string& sql, absl::string_view what) {
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()), &stmt, nullptr) != SQLITE_OK) {
      return SqliteError(db, what);
    }
    return Statement(db, stmt, what);
  }
  Statement(Statement&& other) noexcept
      : db_(other.db_),
        stmt_(std::exchange(other.stmt_, nullptr)),
        what_(std::move(other.what_)),
        bind_status_(std::move(other.bind_status_)) {}
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  void BindInt(int index, int64_t value) { Check(sqlite3_bind_int64(stmt_, index, value)); }
  void BindText(int index, absl::string_view value) {
    Check(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT));
  }
  // A zero-length blob must not be bound from a null pointer (that binds NULL instead).
  void BindBlob(int index, const std::string& value) {
    Check(sqlite3_bind_blob(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT));
  }

  // true: a row is available; false: done. INTERNAL on any error.
  absl::StatusOr<bool> Step() {
    RETURN_IF_ERROR(bind_status_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, what_);
  }
  // Steps a statement that returns no rows.
  absl::Status Run() {
    ASSIGN_OR_RETURN(const bool row, Step());
    if (row) return absl::InternalError(absl::StrCat("sqlite: ", what_, ": unexpected result row"));
    return absl::OkStatus();
  }

  int64_t ColumnInt(int index) { return sqlite3_column_int64(stmt_, index); }
  absl::string_view ColumnText(int index) { return ColumnBlob(index); }  // same bytes, no NUL
  // Valid until the next Step; a zero-length blob comes back as a null pointer.
  absl::string_view ColumnBlob(int index) {
    const void* data = sqlite3_column_blob(stmt_, index);
    const int size = sqlite3_column_bytes(stmt_, index);
    if (data == nullptr || size <= 0) return absl::string_view();
    return absl::string_view(static_cast<const char*>(data), static_cast<size_t>(size));
  }

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt, absl::string_view what) : db_(db), stmt_(stmt), what_(what) {}
  void Check(int rc) {
    if (rc != SQLITE_OK && bind_status_.ok()) bind_status_ = SqliteError(db_, absl::StrCat(what_, " (bind)"));
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string what_;
  absl::Status bind_status_;
};

// The statement is finalized before returning: a pending read would keep a read transaction
// open, and journal_mode cannot change inside one.
absl::StatusOr<int64_t> ReadUserVersion(sqlite3* db) {
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db, "PRAGMA user_version", "reading user_version"));
  ASSIGN_OR_RETURN(const bool row, q.Step());
  return row ? q.ColumnInt(0) : 0;
}

absl::Status CheckSchemaVersion(int64_t version) {
  if (version > SqliteStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("the database has schema version ", version,
                                                      ", newer than this slimd supports (", SqliteStore::kSchemaVersion,
                                                      "); use a newer slimd"));
  }
  return absl::OkStatus();
}

// The tenant's job created with `request_id`, on either connection; NOT_FOUND if none.
absl::StatusOr<v1::Job> JobByRequestOn(sqlite3* db, const std::string& tenant, const std::string& request_id) {
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db, "SELECT data FROM jobs WHERE tenant = ?1 AND request_id = ?2",
                                                   "looking up a job by request id"));
  q.BindText(1, tenant);
  q.BindText(2, request_id);
  ASSIGN_OR_RETURN(const bool row, q.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no job with request_id '", request_id, "'"));
  return Parse<v1::Job>(std::string(q.ColumnBlob(0)), "job");
}

// Shared by the job, dataset and model tables (`table` is one of the constants above), on either
// connection (the caller holds its mutex).
absl::StatusOr<bool> Exists(sqlite3* db, const char* table, const std::string& id) {
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db, absl::StrCat("SELECT 1 FROM ", table, " WHERE id = ?1"),
                                                   absl::StrCat("looking up ", table)));
  q.BindText(1, id);
  return q.Step();
}

// The data blob of `id`, NOT_FOUND "`noun` <id> not found" if absent.
absl::StatusOr<std::string> GetBlob(sqlite3* db, const char* table, const char* noun, const std::string& id) {
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db, absl::StrCat("SELECT data FROM ", table, " WHERE id = ?1"),
                                                   absl::StrCat("reading ", noun, " ", id)));
  q.BindText(1, id);
  ASSIGN_OR_RETURN(const bool row, q.Step());
  if (!row) return absl::NotFoundError(absl::StrCat(noun, " ", id, " not found"));
  return std::string(q.ColumnBlob(0));
}

// Blobs of one page, newest first. `state_filter` is "" or an "AND state IN (...)" clause with
// literal integers. `scope` restricts the tenant; `with_shared` adds the records without one
// (models). Each blob is passed to `add`; returns the next page token.
absl::StatusOr<std::string> ListBlobs(sqlite3* db, const char* table, const std::string& state_filter,
                                      const ListScope& scope, bool with_shared, int page_size,
                                      const std::string& page_token,
                                      const std::function<absl::Status(absl::string_view)>& add) {
  RETURN_IF_ERROR(CheckPageSize(page_size));
  ASSIGN_OR_RETURN(const int64_t before, ParsePageToken(page_token));
  const std::string tenant_filter =
      scope.all_tenants ? "" : (with_shared ? " AND tenant IN (?3, '')" : " AND tenant = ?3");
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db,
                                                   absl::StrCat("SELECT seq, data FROM ", table, " WHERE seq < ?1",
                                                                state_filter, tenant_filter,
                                                                " ORDER BY seq DESC LIMIT ?2"),
                                                   absl::StrCat("listing ", table)));
  q.BindInt(1, before);
  q.BindInt(2, static_cast<int64_t>(page_size) + 1);  // one extra row: is there a next page?
  if (!scope.all_tenants) q.BindText(3, scope.tenant);
  int count = 0;
  int64_t last_seq = 0;
  while (true) {
    ASSIGN_OR_RETURN(const bool row, q.Step());
    if (!row) return std::string();
    if (count == page_size) return absl::StrCat(last_seq);
    last_seq = q.ColumnInt(0);
    RETURN_IF_ERROR(add(q.ColumnBlob(1)));
    ++count;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteStore>> SqliteStore::Open(const std::string& path) {
  // SQLite treats an empty file as a new database; for slimd it is a store that lost its
  // contents (a truncation, a full disk, a bad restore) next to datasets and models it would no
  // longer list. Only a missing file starts an empty store.
  struct stat st;
  if (path != ":memory:" && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sqlite: ", path, " exists but is empty (0 bytes), so the jobs, datasets and models it recorded are lost; "
        "restore it from a backup, or remove it to start with an empty store"));
  }
  sqlite3* db = nullptr;
  // NOMUTEX: mu_ already serializes every use of the connection.
  const int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("sqlite: opening ", path, ": ", message));
  }
  std::unique_ptr<SqliteStore> store(new SqliteStore(db));
  {
    absl::MutexLock lock(&store->mu_);
    absl::Status status = store->Initialize();
    if (!status.ok()) {
      return absl::Status(status.code(), absl::StrCat(status.message(), " (database ", path, ")"));
    }
  }
  if (path != ":memory:") {
    // The read connection, opened once the schema and WAL mode are in place.
    sqlite3* reader = nullptr;
    if (sqlite3_open_v2(path.c_str(), &reader, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK ||
        sqlite3_busy_timeout(reader, kBusyTimeoutMs) != SQLITE_OK) {
      const std::string message = reader != nullptr ? sqlite3_errmsg(reader) : "out of memory";
      sqlite3_close(reader);
      return absl::InternalError(absl::StrCat("sqlite: opening ", path, " for reading: ", message));
    }
    absl::MutexLock lock(&store->read_mu_);
    store->reader_ = reader;
  }
  return store;
}

SqliteStore::~SqliteStore() {
  // Every Statement is finalized when its call returns, so close cannot be refused as busy.
  {
    absl::MutexLock lock(&read_mu_);
    sqlite3_close(reader_);  // a no-op for nullptr
  }
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status SqliteStore::Exec(const char* sql, absl::string_view what) {
  char* error = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string message = error != nullptr ? error : sqlite3_errmsg(db_);
    sqlite3_free(error);
    return absl::InternalError(absl::StrCat("sqlite: ", what, ": ", message));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::InTransaction(absl::string_view what, const std::function<absl::Status()>& body) {
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", absl::StrCat(what, " (begin)")));
  absl::Status status = body();
  if (status.ok()) status = Exec("COMMIT", absl::StrCat(what, " (commit)"));
  // SQLite may already have rolled back on some errors (e.g. disk full); then there is no
  // transaction left to end.
  if (!status.ok() && sqlite3_get_autocommit(db_) == 0) {
    Exec("ROLLBACK", "rollback").IgnoreError();
  }
  return status;
}

absl::Status SqliteStore::Initialize() {
  RETURN_IF_ERROR(sqlite3_busy_timeout(db_, kBusyTimeoutMs) == SQLITE_OK ? absl::OkStatus()
                                                                         : SqliteError(db_, "setting busy_timeout"));
  // The first read of the file: a non-database fails here.
  ASSIGN_OR_RETURN(const int64_t version, ReadUserVersion(db_));
  RETURN_IF_ERROR(CheckSchemaVersion(version));

  {
    ASSIGN_OR_RETURN(Statement wal, Statement::Prepare(db_, "PRAGMA journal_mode = WAL", "setting journal_mode"));
    ASSIGN_OR_RETURN(const bool row, wal.Step());
    const absl::string_view mode = row ? wal.ColumnText(0) : absl::string_view();
    // An in-memory database reports "memory"; any other answer means WAL is unavailable here
    // (e.g. a file system without shared memory), and we would silently lose its guarantees.
    if (mode != "wal" && mode != "memory") {
      return absl::InternalError(absl::StrCat("sqlite: setting journal_mode: got \"", mode, "\" instead of WAL"));
    }
  }
  RETURN_IF_ERROR(Exec("PRAGMA synchronous = FULL", "setting synchronous"));
  RETURN_IF_ERROR(Exec("PRAGMA foreign_keys = ON", "enabling foreign_keys"));

  if (version == kSchemaVersion) return absl::OkStatus();
  if (version == 0) {  // a new database, or another program's: refuse to add tables to the latter
    ASSIGN_OR_RETURN(Statement tables,
                     Statement::Prepare(db_, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name LIMIT 5",
                                        "listing tables"));
    std::string names;
    while (true) {
      ASSIGN_OR_RETURN(const bool row, tables.Step());
      if (!row) break;
      absl::StrAppend(&names, names.empty() ? "" : ", ", tables.ColumnText(0));
    }
    if (!names.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite: not a slimd database: it has tables (", names, ") but no slimd schema version"));
    }
  }
  // Create or upgrade. Re-read the version inside the write lock: another process may have
  // done it between our read and now.
  return InTransaction(version == 0 ? "creating the schema" : "upgrading the schema",
                       [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
                         ASSIGN_OR_RETURN(const int64_t now, ReadUserVersion(db_));
                         RETURN_IF_ERROR(CheckSchemaVersion(now));
                         if (now == kSchemaVersion) return absl::OkStatus();
                         if (now == 0) {
                           RETURN_IF_ERROR(Exec(kSchema, "creating the schema"));
                         } else {
                           if (now == 1) RETURN_IF_ERROR(UpgradeFrom1());
                           RETURN_IF_ERROR(Exec(kUpgradeFrom2, "upgrading the schema from version 2"));
                         }
                         return Exec(absl::StrCat("PRAGMA user_version = ", kSchemaVersion).c_str(),
                                     "setting user_version");
                       });
}

absl::Status SqliteStore::UpgradeFrom1() {
  RETURN_IF_ERROR(Exec(kUpgradeFrom1, "upgrading the schema from version 1"));
  // Every record's tenant into its column (records without one keep '').
  const auto fill = [&](const char* table, const auto& tenant_of) -> absl::Status {
    ASSIGN_OR_RETURN(Statement rows, Statement::Prepare(db_, absl::StrCat("SELECT id, data FROM ", table),
                                                        absl::StrCat("reading ", table, " to upgrade")));
    std::vector<std::pair<std::string, std::string>> tenants;
    while (true) {
      ASSIGN_OR_RETURN(const bool row, rows.Step());
      if (!row) break;
      ASSIGN_OR_RETURN(const std::string tenant, tenant_of(rows.ColumnBlob(1)));
      if (!tenant.empty()) tenants.emplace_back(std::string(rows.ColumnText(0)), tenant);
    }
    for (const auto& [id, tenant] : tenants) {
      ASSIGN_OR_RETURN(Statement update,
                       Statement::Prepare(db_, absl::StrCat("UPDATE ", table, " SET tenant = ?2 WHERE id = ?1"),
                                          absl::StrCat("upgrading ", table, " ", id)));
      update.BindText(1, id);
      update.BindText(2, tenant);
      RETURN_IF_ERROR(update.Run());
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(fill(kJobs, [](absl::string_view data) -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(v1::Job job, Parse<v1::Job>(data, "job"));
    return job.tenant();
  }));
  RETURN_IF_ERROR(fill(kDatasets, [](absl::string_view data) -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(v1::Dataset dataset, Parse<v1::Dataset>(data, "dataset"));
    return dataset.tenant();
  }));
  return fill(kModels, [](absl::string_view data) -> absl::StatusOr<std::string> {
    ASSIGN_OR_RETURN(v1::Model model, Parse<v1::Model>(data, "model"));
    return model.tenant();
  });
}

// ---------------------------------------------------------------------------------------------
// Shared record helpers

absl::Status SqliteStore::InsertRecord(const char* table, const char* noun, const std::string& id,
                                       const std::string& tenant, const std::string& data) {
  return InTransaction(
      absl::StrCat("inserting ", noun, " ", id), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
        ASSIGN_OR_RETURN(const bool exists, Exists(db_, table, id));
        if (exists) return absl::AlreadyExistsError(absl::StrCat(noun, " ", id, " already exists"));
        ASSIGN_OR_RETURN(Statement insert,
                         Statement::Prepare(db_,
                                            absl::StrCat("INSERT INTO ", table, " (id, data, tenant) VALUES (?1, ?2, ?3)"),
                                            absl::StrCat("inserting ", noun, " ", id)));
        insert.BindText(1, id);
        insert.BindBlob(2, data);
        insert.BindText(3, tenant);
        return insert.Run();
      });
}

absl::Status SqliteStore::WriteJob(const v1::Job& job) {
  ASSIGN_OR_RETURN(Statement update,
                   Statement::Prepare(db_, "UPDATE jobs SET state = ?2, last_sequence = ?3, data = ?4 WHERE id = ?1",
                                      absl::StrCat("writing job ", job.id())));
  update.BindText(1, job.id());
  update.BindInt(2, job.state());
  update.BindInt(3, job.last_sequence());
  update.BindBlob(4, Serialize(job));
  RETURN_IF_ERROR(update.Run());
  if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("job ", job.id(), " not found"));
  return absl::OkStatus();
}

absl::Status SqliteStore::InsertEvent(const std::string& job_id, const v1::JobEvent& event) {
  ASSIGN_OR_RETURN(Statement insert,
                   Statement::Prepare(db_, "INSERT INTO events (job_id, sequence, data) VALUES (?1, ?2, ?3)",
                                      absl::StrCat("appending event ", event.sequence(), " of job ", job_id)));
  insert.BindText(1, job_id);
  insert.BindInt(2, event.sequence());
  insert.BindBlob(3, Serialize(event));
  return insert.Run();
}

absl::StatusOr<int64_t> SqliteStore::StoredLastSequence(const std::string& id) {
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db_, "SELECT last_sequence FROM jobs WHERE id = ?1",
                                                   absl::StrCat("reading job ", id)));
  q.BindText(1, id);
  ASSIGN_OR_RETURN(const bool row, q.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  return q.ColumnInt(0);
}

// ---------------------------------------------------------------------------------------------
// Ids

absl::StatusOr<std::string> SqliteStore::NewId(const std::string& prefix) {
  RETURN_IF_ERROR(CheckId(prefix, "prefix"));
  absl::MutexLock lock(&mu_);
  int64_t number = 0;
  RETURN_IF_ERROR(InTransaction(
      absl::StrCat("issuing a ", prefix, " id"), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
        ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db_, "SELECT next FROM counters WHERE prefix = ?1",
                                                         "reading the id counter"));
        q.BindText(1, prefix);
        ASSIGN_OR_RETURN(const bool row, q.Step());
        number = (row ? q.ColumnInt(0) : 0) + 1;
        ASSIGN_OR_RETURN(Statement w, Statement::Prepare(db_,
                                                         "INSERT OR REPLACE INTO counters "
                                                         "(prefix, next) VALUES (?1, ?2)",
                                                         "writing the id counter"));
        w.BindText(1, prefix);
        w.BindInt(2, number);
        return w.Run();
      }));
  return store_helpers::FormatId(prefix, number);
}

// ---------------------------------------------------------------------------------------------
// Jobs

absl::StatusOr<v1::Job> SqliteStore::CreateJob(v1::Job job, v1::JobEvent first_event) {
  RETURN_IF_ERROR(CheckId(job.id(), "job.id"));
  job.set_last_sequence(1);
  first_event.set_sequence(1);
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(
      InTransaction(absl::StrCat("creating job ", job.id()), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
        ASSIGN_OR_RETURN(const bool exists, Exists(db_, kJobs, job.id()));
        if (exists) {
          return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " already exists"));
        }
        if (!job.request_id().empty()) {
          absl::StatusOr<v1::Job> earlier = JobByRequestOn(db_, job.tenant(), job.request_id());
          if (earlier.ok()) {
            job = *std::move(earlier);  // a retry: the first call's job
            return absl::OkStatus();
          }
          if (earlier.status().code() != absl::StatusCode::kNotFound) return earlier.status();
        }
        ASSIGN_OR_RETURN(Statement insert, Statement::Prepare(db_,
                                                              "INSERT INTO jobs (id, state, last_sequence, "
                                                              "data, tenant, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                                                              absl::StrCat("inserting job ", job.id())));
        insert.BindText(1, job.id());
        insert.BindInt(2, job.state());
        insert.BindInt(3, job.last_sequence());
        insert.BindBlob(4, Serialize(job));
        insert.BindText(5, job.tenant());
        if (!job.request_id().empty()) insert.BindText(6, job.request_id());  // else NULL
        RETURN_IF_ERROR(insert.Run());
        return InsertEvent(job.id(), first_event);
      }));
  return job;
}

absl::StatusOr<v1::Job> SqliteStore::JobByRequest(const std::string& tenant, const std::string& request_id) {
  return Read([&](sqlite3* db) { return JobByRequestOn(db, tenant, request_id); });
}

absl::StatusOr<v1::Job> SqliteStore::GetJob(const std::string& id) {
  return Read([&](sqlite3* db) -> absl::StatusOr<v1::Job> {
    ASSIGN_OR_RETURN(const std::string data, GetBlob(db, kJobs, "job", id));
    return Parse<v1::Job>(data, "job");
  });
}

absl::StatusOr<v1::Job> SqliteStore::UpdateJob(v1::Job job, v1::JobEvent event) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(
      InTransaction(absl::StrCat("updating job ", job.id()), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
        ASSIGN_OR_RETURN(const int64_t last, StoredLastSequence(job.id()));
        event.set_sequence(last + 1);
        job.set_last_sequence(last + 1);
        RETURN_IF_ERROR(WriteJob(job));
        return InsertEvent(job.id(), event);
      }));
  return job;
}

absl::Status SqliteStore::SaveJob(const v1::Job& job) {
  absl::MutexLock lock(&mu_);
  return InTransaction(absl::StrCat("saving job ", job.id()), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    ASSIGN_OR_RETURN(const int64_t last, StoredLastSequence(job.id()));
    if (last == job.last_sequence()) return WriteJob(job);
    v1::Job copy = job;  // a snapshot taken before the newest event: keep the stored sequence
    copy.set_last_sequence(last);
    return WriteJob(copy);
  });
}

absl::StatusOr<Page<v1::Job>> SqliteStore::ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                                    const std::string& page_token, const ListScope& scope) {
  return Read([&](sqlite3* db) -> absl::StatusOr<Page<v1::Job>> {
    Page<v1::Job> page;
    ASSIGN_OR_RETURN(page.next_page_token, ListBlobs(db, kJobs, StateFilter(states), scope, false, page_size, page_token,
                                                     [&](absl::string_view data) -> absl::Status {
                                                       ASSIGN_OR_RETURN(v1::Job job, Parse<v1::Job>(data, "job"));
                                                       page.items.push_back(std::move(job));
                                                       return absl::OkStatus();
                                                     }));
    return page;
  });
}

absl::StatusOr<std::vector<v1::Job>> SqliteStore::JobsInStates(const std::vector<v1::JobState>& states) {
  if (states.empty()) return std::vector<v1::Job>();
  return Read([&](sqlite3* db) -> absl::StatusOr<std::vector<v1::Job>> {
    ASSIGN_OR_RETURN(
        Statement q,
        Statement::Prepare(db, absl::StrCat("SELECT data FROM jobs WHERE 1", StateFilter(states), " ORDER BY seq ASC"),
                           "listing jobs by state"));
    std::vector<v1::Job> jobs;
    while (true) {
      ASSIGN_OR_RETURN(const bool row, q.Step());
      if (!row) return jobs;
      ASSIGN_OR_RETURN(v1::Job job, Parse<v1::Job>(q.ColumnBlob(0), "job"));
      jobs.push_back(std::move(job));
    }
  });
}

absl::StatusOr<std::map<v1::JobState, int64_t>> SqliteStore::CountJobsByState() {
  return Read([&](sqlite3* db) -> absl::StatusOr<std::map<v1::JobState, int64_t>> {
    ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db, "SELECT state, COUNT(*) FROM jobs GROUP BY state",
                                                     "counting jobs by state"));
    std::map<v1::JobState, int64_t> counts;
    while (true) {
      ASSIGN_OR_RETURN(const bool row, q.Step());
      if (!row) return counts;
      counts[static_cast<v1::JobState>(q.ColumnInt(0))] = q.ColumnInt(1);
    }
  });
}

absl::StatusOr<std::vector<v1::JobEvent>> SqliteStore::ListEvents(const std::string& job_id, int64_t after_sequence,
                                                                  int limit) {
  if (limit < 1) return absl::InvalidArgumentError(absl::StrCat("limit: must be at least 1, got ", limit));
  return Read([&](sqlite3* db) -> absl::StatusOr<std::vector<v1::JobEvent>> {
    ASSIGN_OR_RETURN(const bool exists, Exists(db, kJobs, job_id));
    if (!exists) return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
    ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db,
                                                     "SELECT data FROM events WHERE job_id = ?1 AND sequence > ?2 "
                                                     "ORDER BY sequence ASC LIMIT ?3",
                                                     absl::StrCat("listing events of job ", job_id)));
    q.BindText(1, job_id);
    q.BindInt(2, after_sequence);
    q.BindInt(3, limit);
    std::vector<v1::JobEvent> events;
    while (true) {
      ASSIGN_OR_RETURN(const bool row, q.Step());
      if (!row) return events;
      ASSIGN_OR_RETURN(v1::JobEvent event, Parse<v1::JobEvent>(q.ColumnBlob(0), "event"));
      events.push_back(std::move(event));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Datasets and models

absl::Status SqliteStore::PutDataset(const v1::Dataset& dataset) {
  RETURN_IF_ERROR(CheckId(dataset.id(), "dataset.id"));
  absl::MutexLock lock(&mu_);
  return InsertRecord(kDatasets, "dataset", dataset.id(), dataset.tenant(), Serialize(dataset));
}

absl::StatusOr<v1::Dataset> SqliteStore::GetDataset(const std::string& id) {
  return Read([&](sqlite3* db) -> absl::StatusOr<v1::Dataset> {
    ASSIGN_OR_RETURN(const std::string data, GetBlob(db, kDatasets, "dataset", id));
    return Parse<v1::Dataset>(data, "dataset");
  });
}

absl::StatusOr<Page<v1::Dataset>> SqliteStore::ListDatasets(int page_size, const std::string& page_token,
                                                            const ListScope& scope) {
  return Read([&](sqlite3* db) -> absl::StatusOr<Page<v1::Dataset>> {
    Page<v1::Dataset> page;
    ASSIGN_OR_RETURN(page.next_page_token,
                     ListBlobs(db, kDatasets, "", scope, false, page_size, page_token, [&](absl::string_view data) -> absl::Status {
                       ASSIGN_OR_RETURN(v1::Dataset dataset, Parse<v1::Dataset>(data, "dataset"));
                       page.items.push_back(std::move(dataset));
                       return absl::OkStatus();
                     }));
    return page;
  });
}

absl::Status SqliteStore::DeleteDataset(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db_, "DELETE FROM datasets WHERE id = ?1",
                                                   absl::StrCat("deleting dataset ", id)));
  q.BindText(1, id);
  RETURN_IF_ERROR(q.Run());
  if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
  return absl::OkStatus();
}

absl::Status SqliteStore::DeleteModel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db_, "DELETE FROM models WHERE id = ?1",
                                                   absl::StrCat("deleting model ", id)));
  q.BindText(1, id);
  RETURN_IF_ERROR(q.Run());
  if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("model ", id, " not found"));
  return absl::OkStatus();
}

absl::Status SqliteStore::DeleteJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return InTransaction(absl::StrCat("deleting job ", id), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    ASSIGN_OR_RETURN(Statement state, Statement::Prepare(db_, "SELECT state FROM jobs WHERE id = ?1",
                                                         absl::StrCat("reading job ", id)));
    state.BindText(1, id);
    ASSIGN_OR_RETURN(const bool row, state.Step());
    if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    RETURN_IF_ERROR(CheckEnded(id, static_cast<v1::JobState>(state.ColumnInt(0))));
    for (const char* sql : {"DELETE FROM events WHERE job_id = ?1", "DELETE FROM jobs WHERE id = ?1"}) {
      ASSIGN_OR_RETURN(Statement q, Statement::Prepare(db_, sql, absl::StrCat("deleting job ", id)));
      q.BindText(1, id);
      RETURN_IF_ERROR(q.Run());
    }
    return absl::OkStatus();
  });
}

absl::Status SqliteStore::PutModel(const v1::Model& model) {
  RETURN_IF_ERROR(CheckId(model.id(), "model.id"));
  absl::MutexLock lock(&mu_);
  return InsertRecord(kModels, "model", model.id(), model.tenant(), Serialize(model));
}

absl::StatusOr<v1::Model> SqliteStore::GetModel(const std::string& id) {
  return Read([&](sqlite3* db) -> absl::StatusOr<v1::Model> {
    ASSIGN_OR_RETURN(const std::string data, GetBlob(db, kModels, "model", id));
    return Parse<v1::Model>(data, "model");
  });
}

absl::StatusOr<Page<v1::Model>> SqliteStore::ListModels(int page_size, const std::string& page_token,
                                                        const ListScope& scope) {
  return Read([&](sqlite3* db) -> absl::StatusOr<Page<v1::Model>> {
    Page<v1::Model> page;
    ASSIGN_OR_RETURN(page.next_page_token,
                     ListBlobs(db, kModels, "", scope, true, page_size, page_token, [&](absl::string_view data) -> absl::Status {
                       ASSIGN_OR_RETURN(v1::Model model, Parse<v1::Model>(data, "model"));
                       page.items.push_back(std::move(model));
                       return absl::OkStatus();
                     }));
    return page;
  });
}

}  // namespace slim::server
