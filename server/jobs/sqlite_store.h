// SqliteStore: the Store on one embedded SQLite file (the default store of slimd).
//
// Layout (schema version 1, kept in `PRAGMA user_version`): each record is its serialized
// protobuf message in a `data` BLOB, next to the few columns the queries need:
//   jobs(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, state INTEGER,
//        last_sequence INTEGER, data BLOB)            -- state/last_sequence mirror the blob
//   events(job_id TEXT REFERENCES jobs(id), sequence INTEGER, data BLOB,
//          PRIMARY KEY(job_id, sequence))
//   datasets(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, data BLOB)
//   models(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, data BLOB)
//   counters(prefix TEXT PRIMARY KEY, next INTEGER)   -- NewId's last issued number per prefix
// `seq` is the insertion order; AUTOINCREMENT means it is never reused, even after a delete,
// so "newest first" is "descending seq" and a page token stays valid across deletes.
//
// Durability: WAL journal with `synchronous=FULL`, so a call that returned OK has been
// fsync'ed to the WAL and survives a power loss, not just a crash of the process. NORMAL would
// be safe against corruption too, but could lose the last commits on power loss — and with
// them issued ids (reused later, breaking "unique forever") and event sequences that clients
// have already seen and resume from. The price is one WAL fsync per write, which is small next
// to the rate of job events. `busy_timeout` is 5 s; foreign keys are enforced.
//
// Page tokens are the decimal `seq` of the last item returned; anything else is
// INVALID_ARGUMENT "page_token: malformed". Lists fetch one row past the page to know whether
// a next page exists, so the last page always has an empty next_page_token.
//
// Thread-safety: two connections. Writes use one, each holding `mu_` for its whole duration
// (SQLite serializes writers anyway). Reads use the other, under `read_mu_`, so that a read
// never queues behind a write: with synchronous=FULL every commit waits for an fsync of the WAL
// (milliseconds, tens under I/O load), and GetJob, ListJobs and WatchJob's event reads are on the
// RPC path. In WAL mode a read sees every transaction committed before it starts, so a write
// that returned is visible to the next read. ":memory:" has no second connection (it would be a
// database of its own): its reads share the writer's connection and `mu_`. Other processes may
// open the same file: writes take the write lock up front (BEGIN IMMEDIATE) and wait up to
// busy_timeout for it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/jobs/store.h"
#include "slim/v1/slim.pb.h"

struct sqlite3;

namespace slim::server {

class SqliteStore : public Store {
 public:
  // The schema version this code reads and writes.
  // 2: a tenant column (indexed) in jobs, datasets and models, filled from the records when a
  // version 1 database is opened.
  static constexpr int kSchemaVersion = 3;

  // Opens `path`, creating the file and the schema if missing, upgrading an older schema (the
  // directory must exist).
  // ":memory:" gives a private, non-durable store (tests). Errors: FAILED_PRECONDITION if the
  // file has a newer schema version than kSchemaVersion; INTERNAL with the SQLite message if
  // it cannot be opened or is not a database.
  static absl::StatusOr<std::unique_ptr<SqliteStore>> Open(const std::string& path);
  // Closes the connection (SQLite checkpoints the WAL when the last connection closes).
  ~SqliteStore() override;

  SqliteStore(const SqliteStore&) = delete;
  SqliteStore& operator=(const SqliteStore&) = delete;

  // Store. Beyond the interface's contract: an empty id or prefix is INVALID_ARGUMENT; SaveJob
  // and UpdateJob of an unknown id are NOT_FOUND; SaveJob keeps the stored last_sequence
  // (a stale snapshot cannot move it back); ListEvents of an unknown job is NOT_FOUND and
  // `limit` must be >= 1; JobsInStates with no states returns no jobs.
  absl::StatusOr<std::string> NewId(const std::string& prefix) override;
  absl::StatusOr<v1::Job> CreateJob(v1::Job job, v1::JobEvent first_event) override;
  absl::StatusOr<v1::Job> JobByRequest(const std::string& tenant, const std::string& request_id) override;
  absl::StatusOr<v1::Job> GetJob(const std::string& id) override;
  absl::StatusOr<v1::Job> UpdateJob(v1::Job job, v1::JobEvent event) override;
  absl::Status SaveJob(const v1::Job& job) override;
  using Store::ListDatasets;
  using Store::ListJobs;
  using Store::ListModels;
  absl::StatusOr<Page<v1::Job>> ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                         const std::string& page_token, const ListScope& scope) override;
  absl::StatusOr<std::vector<v1::Job>> JobsInStates(const std::vector<v1::JobState>& states) override;
  absl::StatusOr<std::map<v1::JobState, int64_t>> CountJobsByState() override;
  absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id, int64_t after_sequence,
                                                       int limit) override;
  absl::Status PutDataset(const v1::Dataset& dataset) override;
  absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) override;
  absl::StatusOr<Page<v1::Dataset>> ListDatasets(int page_size, const std::string& page_token,
                                                 const ListScope& scope) override;
  absl::Status DeleteDataset(const std::string& id) override;
  absl::Status DeleteModel(const std::string& id) override;
  absl::Status DeleteJob(const std::string& id) override;
  absl::Status PutModel(const v1::Model& model) override;
  absl::StatusOr<v1::Model> GetModel(const std::string& id) override;
  absl::StatusOr<Page<v1::Model>> ListModels(int page_size, const std::string& page_token,
                                             const ListScope& scope) override;

 private:
  explicit SqliteStore(sqlite3* db) : db_(db) {}

  // Runs `fn(connection)` for a read: on the read connection under read_mu_, or on the writer's
  // under mu_ when there is none.
  template <typename Fn>
  auto Read(Fn&& fn) {
    if (reader_ != nullptr) {
      absl::MutexLock lock(&read_mu_);
      return fn(reader_);
    }
    absl::MutexLock lock(&mu_);
    return fn(db_);
  }

  // Runs `sql` (no parameters, no result rows); INTERNAL "`what`: <sqlite message>" on error.
  absl::Status Exec(const char* sql, absl::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs `body` between BEGIN IMMEDIATE and COMMIT; rolls back if either fails.
  absl::Status InTransaction(absl::string_view what, const std::function<absl::Status()>& body)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pragmas, version check and schema creation; called once by Open.
  absl::Status Initialize() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Version 1 → 2 inside the caller's transaction: the tenant columns, filled from the records.
  absl::Status UpgradeFrom1() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Status InsertRecord(const char* table, const char* noun, const std::string& id, const std::string& tenant,
                            const std::string& data)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes the job row (data, state, last_sequence from `job`); NOT_FOUND if absent.
  absl::Status WriteJob(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertEvent(const std::string& job_id, const v1::JobEvent& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The stored last_sequence of a job; NOT_FOUND if absent.
  absl::StatusOr<int64_t> StoredLastSequence(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
  absl::Mutex read_mu_;
  sqlite3* reader_ ABSL_PT_GUARDED_BY(read_mu_) = nullptr;  // set by Open, before the store is shared
};

}  // namespace slim::server
