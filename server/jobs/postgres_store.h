// PostgresStore: the Store on a PostgreSQL database (libpqxx), for fleets of slimd replicas
// sharing one job store (docs/operations.md "Running a fleet"). Same contract and
// semantics as SqliteStore, plus the Store's replica methods when opened with a replica id.
//
// Layout (schema version 2, in the one-row table `schema_version`): each record is its
// serialized protobuf message in a `data` BYTEA, next to the columns the queries need:
//   jobs(seq BIGINT IDENTITY PRIMARY KEY, id TEXT UNIQUE, state INTEGER, last_sequence BIGINT,
//        owner TEXT, lease_expires_at TIMESTAMPTZ, cancel_requested BOOLEAN,
//        created_at, updated_at TIMESTAMPTZ, data BYTEA)  -- state/last_sequence mirror the blob
//   events(job_id TEXT REFERENCES jobs(id), sequence BIGINT, created_at TIMESTAMPTZ,
//          data BYTEA, PRIMARY KEY(job_id, sequence))
//   datasets(seq BIGINT IDENTITY PRIMARY KEY, id TEXT UNIQUE, data BYTEA)
//   models(seq BIGINT IDENTITY PRIMARY KEY, id TEXT UNIQUE, data BYTEA)
//   counters(prefix TEXT PRIMARY KEY, next BIGINT)    -- NewId's last issued number per prefix
// `seq` is the insertion order from an identity sequence, never reused, so "newest first" is
// "descending seq" and page tokens (the decimal seq of the last item) survive deletes. Schema
// creation and the upgrade from version 1 (which lacked cancel_requested) are idempotent and
// serialized across replicas by a transaction-level advisory lock, so replicas may start at
// the same time.
//
// Replicas: `owner` is the replica id that owns the job, `lease_expires_at` when its lease
// ends by the database's clock (now()), `cancel_requested` a pending RequestCancel. Claims are
// conditional UPDATEs (`... WHERE state = QUEUED AND (owner IS NULL OR lease_expires_at <
// now())`), takeovers `SELECT ... FOR UPDATE SKIP LOCKED`, so racing replicas never both win.
// Fencing (store.h) runs inside UpdateJob/SaveJob's transaction, on the locked row.
//
// Sequencing: UpdateJob and SaveJob lock the job row (`SELECT ... FOR UPDATE`) before reading
// last_sequence, so concurrent updates from any number of connections or replicas serialize
// per job and every event gets a distinct sequence with no gaps. NewId is one
// `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` (atomic across replicas).
//
// Notifications, sent inside the writing transaction (so listeners hear of a change only once
// it is committed and readable):
//   `NOTIFY slim_job_events, '<job id>:<sequence>'` (kEventsChannel) for every inserted event;
//     the job id is everything before the last ':';
//   `NOTIFY slim_job_control, 'queued:<job id>'` (kControlChannel) when a job is stored QUEUED
//     (created or requeued), and `'cancel:<job id>'` on RequestCancel.
// Listen runs one more connection (outside the pool) with LISTEN on both channels, on its own
// thread; a broken one is replaced after a second, and a check query every 5 s finds one that
// broke silently.
//
// Errors: beyond the Store's codes, UNAVAILABLE when the server cannot be reached or a
// connection broke (with libpq's message), INVALID_ARGUMENT for a malformed connection string
// (at Open), ABORTED if a transaction kept failing with serialization failures or deadlocks
// after retries, INTERNAL "postgres: <what>: <server message>" for anything else.
// A transaction that failed because its connection broke before COMMIT is retried once on a
// fresh connection (a server restart or failover is invisible to callers); a connection lost
// during COMMIT is UNAVAILABLE "outcome unknown" and is not retried.
//
// Thread-safety: all methods may be called concurrently. libpqxx connections are not
// thread-safe, so each call borrows one connection from a pool of at most `pool_size` (opened
// lazily, kept open while healthy) for its whole transaction and waits while all are busy.
// A broken connection is closed, and with it every idle one (they usually broke together).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/jobs/store.h"
#include "slim/v1/slim.pb.h"

namespace pqxx {
class transaction_base;
}

namespace slim::server {

struct PostgresStoreOptions {
  // Connections open at most at once (one per concurrent call). At least 1.
  int pool_size = 4;
  // The replica this store acts for ("" = none: no fencing, no replica methods). 1 to 63
  // characters of [A-Za-z0-9._-]; unique among the live replicas of one database.
  std::string replica_id;
};

class PostgresStore : public Store {
 public:
  // The schema version this code reads and writes.
  // 2: cancel requests; 3: tenant columns for listings by tenant. Older schemas are upgraded
  // when a store is opened.
  static constexpr int kSchemaVersion = 4;
  // The LISTEN/NOTIFY channel of new events (payload "<job id>:<sequence>").
  static constexpr char kEventsChannel[] = "slim_job_events";
  // Claimable jobs and cancel requests (payloads "queued:<job id>", "cancel:<job id>").
  static constexpr char kControlChannel[] = "slim_job_control";

  // Connects to `url`, a libpq connection string: a URI
  // ("postgresql://user:password@host:5432/dbname?sslmode=require") or key=value pairs
  // ("host=... dbname=..."); unset parts come from libpq's PG* environment variables.
  // Creates the schema if missing. Errors: INVALID_ARGUMENT if `url` does not parse or
  // pool_size < 1; UNAVAILABLE if the server cannot be reached or refuses the connection;
  // FAILED_PRECONDITION if the database has a newer schema version than kSchemaVersion;
  // INTERNAL if creating the schema fails (e.g. no privilege). INVALID_ARGUMENT for a malformed
  // replica_id.
  static absl::StatusOr<std::unique_ptr<PostgresStore>> Open(const std::string& url, PostgresStoreOptions options = {});
  // Stops listening and closes the pooled connections. No call may be in progress.
  ~PostgresStore() override;

  PostgresStore(const PostgresStore&) = delete;
  PostgresStore& operator=(const PostgresStore&) = delete;

  // Store. Beyond the interface's contract (as SqliteStore): an empty id or prefix is
  // INVALID_ARGUMENT; SaveJob and UpdateJob of an unknown id are NOT_FOUND; SaveJob keeps the
  // stored last_sequence; ListEvents of an unknown job is NOT_FOUND and `limit` must be >= 1;
  // JobsInStates with no states returns no jobs.
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

  // Replicas (store.h). Every method but Listen needs a replica id (else UNIMPLEMENTED); a
  // lease must be positive (else INVALID_ARGUMENT). Listen fails with UNAVAILABLE if its first
  // connection cannot be made (then nothing keeps trying); later failures are retried.
  std::string replica_id() const override { return replica_id_; }
  absl::StatusOr<JobClaim> ClaimJob(const std::string& id, absl::Duration lease) override;
  absl::StatusOr<std::vector<JobLease>> RenewLeases(absl::Duration lease) override;
  absl::Status ReleaseJob(const std::string& id) override;
  absl::StatusOr<std::vector<JobClaim>> TakeOverExpiredJobs(absl::Duration lease) override;
  absl::StatusOr<std::string> RequestCancel(const std::string& id) override;
  absl::Status PublishDevices(const v1::ListDevicesResponse& devices) override;
  absl::StatusOr<std::vector<v1::ListDevicesResponse>> FleetDevices(absl::Duration max_age) override;
  absl::Status Listen(std::function<void(const StoreNotification&)> callback) override
      ABSL_LOCKS_EXCLUDED(listen_mu_);
  void StopListening() override ABSL_LOCKS_EXCLUDED(listen_mu_);

 private:
  struct Connection;  // one libpqxx connection
  using Body = std::function<absl::Status(pqxx::transaction_base&)>;

  PostgresStore(std::string url, int pool_size, std::string replica_id);

  // A pooled connection: an idle one, else a new one while fewer than pool_size_ are open,
  // else waits for one to be released. UNAVAILABLE if connecting fails.
  absl::StatusOr<std::unique_ptr<Connection>> Acquire() ABSL_LOCKS_EXCLUDED(mu_);
  // Returns a healthy connection to the pool; closes a broken one and every idle one.
  void Release(std::unique_ptr<Connection> connection, bool broken) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs `body` in one transaction on a pooled connection and commits if it returns OK (rolls
  // back otherwise). Maps libpqxx exceptions to statuses "postgres: `what`: ..." and retries
  // as the class comment describes, so `body` must only have effects through the transaction
  // (or recompute them on every run).
  absl::Status Transact(absl::string_view what, const Body& body) ABSL_LOCKS_EXCLUDED(mu_);
  // Creates, upgrades or checks the schema; called once by Open.
  absl::Status Initialize();
  // UNIMPLEMENTED without a replica id; INVALID_ARGUMENT for a lease <= 0.
  absl::Status CheckReplica(absl::Duration lease = absl::Seconds(1)) const;
  // The listening thread: connects, LISTENs, delivers, reconnects. Reports the first
  // attempt's outcome through `first`.
  void ListenLoop(std::function<void(const StoreNotification&)> callback, absl::Status* first_status,
                  absl::Notification* first);

  // Shared by the datasets and models tables (`table` is one of the constants in the .cc).
  absl::StatusOr<std::string> GetBlob(const char* table, const char* noun, const std::string& id);
  absl::Status InsertRecord(const char* table, const char* noun, const std::string& id, const std::string& tenant,
                            const std::string& data);
  // Blobs of one page, newest first. `state_filter` is "" or an "AND state IN (...)" clause
  // with literal integers. `scope` restricts the tenant; `with_shared` adds the records
  // without one (models). Each blob is passed to `add`; returns the next page token.
  absl::StatusOr<std::string> ListBlobs(const char* table, const std::string& state_filter, const ListScope& scope,
                                        bool with_shared, int page_size, const std::string& page_token,
                                        const std::function<absl::Status(absl::string_view)>& add);

  const std::string url_;
  const int pool_size_;
  const std::string replica_id_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;  // idle and borrowed

  absl::Mutex listen_mu_;  // serializes Listen and StopListening
  std::thread listener_ ABSL_GUARDED_BY(listen_mu_);
  std::atomic<bool> stop_listening_{false};
};

}  // namespace slim::server
