// Durable state of the service: jobs with their ordered events, datasets and models. Records
// are the API's own protobuf messages (proto/slim/v1/slim.proto); the store adds no meaning to
// them beyond the indexed fields it documents. Implementations: SqliteStore (embedded, the
// default) and PostgresStore (a shared database, for fleets); tests/server/store_test.cc runs
// this contract against both.
//
// Replicas (fleets of slimd sharing one store, docs/operations.md "Running a fleet"): a store
// opened for a replica (PostgresStore with PostgresStoreOptions::replica_id) also coordinates
// which replica runs which job, with the methods of the last section below. A job is *owned*
// by at most one replica at a time, under a lease that the owner renews and that expires by
// the database's clock. Only the owner may write an owned job (fencing): UpdateJob/SaveJob of
// a job owned by another replica are FAILED_PRECONDITION, whether or not that replica's lease
// has expired (expired jobs change owner only through TakeOverExpiredJobs), and a write based
// on an outdated read (job.last_sequence differs from the stored one) is ABORTED. UpdateJob
// releases the job (no owner) when it stores a QUEUED or terminal state. Stores without a
// replica id (SqliteStore, and PostgresStore opened without one) do not fence, and their
// replica methods are UNIMPLEMENTED; the default implementations below say so.
//
// Thread-safety: every method may be called from any thread concurrently.
// Errors: NOT_FOUND for unknown ids, ALREADY_EXISTS for a duplicate insert, INTERNAL for
// storage failures (with the backend's message), INVALID_ARGUMENT for a malformed page token,
// UNAVAILABLE when a database server cannot be reached (PostgresStore), ABORTED when
// concurrent transactions kept conflicting (PostgresStore, after retries). A failed call
// changed nothing, except possibly one that PostgresStore reports as "outcome unknown" (the
// connection was lost during COMMIT).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

// One page of a listing, newest first.
template <typename T>
struct Page {
  std::vector<T> items;
  std::string next_page_token;  // empty on the last page
};

// Whose records a listing returns: every tenant's (the default), or one tenant's — for models
// also the shared ones, which have no tenant (an admin's imports). Tenants are the records'
// `tenant` fields, kept in an indexed column, so a tenant's page costs the same however many
// records others have.
struct ListScope {
  bool all_tenants = true;
  std::string tenant;
  static ListScope All() { return {}; }
  static ListScope Of(std::string tenant) { return {false, std::move(tenant)}; }
};

// A job a replica owns, as RenewLeases reports it.
struct JobLease {
  std::string job_id;
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  bool cancel_requested = false;  // another replica asked for it to be cancelled (RequestCancel)
};

// A job that ClaimJob or TakeOverExpiredJobs gave to this replica.
struct JobClaim {
  v1::Job job;                    // as stored
  bool cancel_requested = false;  // cancel it instead of running it
  std::string previous_owner;     // TakeOverExpiredJobs: whose lease expired ("" if none had one)
};

// What a Listen callback hears, from any replica (PostgreSQL LISTEN/NOTIFY).
struct StoreNotification {
  enum class Kind {
    kEvent,            // job_id recorded the event `sequence`
    kQueued,           // job_id was stored QUEUED (created or requeued): it may be claimed
    kCancelRequested,  // RequestCancel(job_id) was called
    kResync,           // notifications may have been lost (the listening connection was
                       // re-established): re-read whatever depends on them; job_id is empty
  };
  Kind kind = Kind::kEvent;
  std::string job_id;
  int64_t sequence = 0;  // kEvent only
};

class Store {
 public:
  virtual ~Store() = default;

  // Ids: "<prefix>-<6+ digit counter>", unique forever in this store (never reused after
  // deletes), e.g. NewId("job") → "job-000001".
  virtual absl::StatusOr<std::string> NewId(const std::string& prefix) = 0;

  // Jobs. CreateJob inserts `job` (its id set, last_sequence 0) and its first event
  // atomically; the event gets sequence 1 and job.last_sequence becomes 1. With a request_id,
  // if the job's tenant already has a job with that request_id, nothing is inserted and that
  // job is returned (its id differs from `job`'s): the check and the insert are one transaction.
  virtual absl::StatusOr<v1::Job> CreateJob(v1::Job job, v1::JobEvent first_event) = 0;
  // The tenant's job created with `request_id`; NOT_FOUND if none.
  virtual absl::StatusOr<v1::Job> JobByRequest(const std::string& tenant, const std::string& request_id) = 0;
  virtual absl::StatusOr<v1::Job> GetJob(const std::string& id) = 0;
  // Replaces the stored job with `job` and appends `event` in one transaction: the event gets
  // sequence = stored last_sequence + 1, and the stored job's last_sequence is set to it (the
  // caller's value is ignored). Returns the stored job.
  virtual absl::StatusOr<v1::Job> UpdateJob(v1::Job job, v1::JobEvent event) = 0;
  // Replaces the stored job without an event (e.g. progress snapshots between events).
  virtual absl::Status SaveJob(const v1::Job& job) = 0;
  // Newest first (by creation). `states` empty = all. page_size in [1, 1000]. Page tokens are
  // valid only with the same states and scope.
  virtual absl::StatusOr<Page<v1::Job>> ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                                 const std::string& page_token, const ListScope& scope) = 0;
  absl::StatusOr<Page<v1::Job>> ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                         const std::string& page_token) {
    return ListJobs(states, page_size, page_token, ListScope::All());
  }
  // Every job in one of `states`, oldest first (the scheduler's and the restart's view).
  virtual absl::StatusOr<std::vector<v1::Job>> JobsInStates(const std::vector<v1::JobState>& states) = 0;
  // How many jobs are in each state (states with none are absent).
  virtual absl::StatusOr<std::map<v1::JobState, int64_t>> CountJobsByState() = 0;
  // Events of a job with sequence > after_sequence, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id, int64_t after_sequence,
                                                               int limit) = 0;
  // Deletes an ended job (SUCCEEDED, FAILED or CANCELLED) and its events in one transaction:
  // the state is checked inside it, so a job that is running cannot be deleted. NOT_FOUND for
  // an unknown job; FAILED_PRECONDITION naming the state of one that has not ended.
  virtual absl::Status DeleteJob(const std::string& id) = 0;

  // Datasets and models: insert (ALREADY_EXISTS if the id exists), get, list newest first.
  virtual absl::Status PutDataset(const v1::Dataset& dataset) = 0;
  virtual absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) = 0;
  virtual absl::StatusOr<Page<v1::Dataset>> ListDatasets(int page_size, const std::string& page_token,
                                                         const ListScope& scope) = 0;
  absl::StatusOr<Page<v1::Dataset>> ListDatasets(int page_size, const std::string& page_token) {
    return ListDatasets(page_size, page_token, ListScope::All());
  }
  virtual absl::Status DeleteDataset(const std::string& id) = 0;
  virtual absl::Status PutModel(const v1::Model& model) = 0;
  virtual absl::Status DeleteModel(const std::string& id) = 0;  // NOT_FOUND if there is none
  virtual absl::StatusOr<v1::Model> GetModel(const std::string& id) = 0;
  virtual absl::StatusOr<Page<v1::Model>> ListModels(int page_size, const std::string& page_token,
                                                     const ListScope& scope) = 0;
  absl::StatusOr<Page<v1::Model>> ListModels(int page_size, const std::string& page_token) {
    return ListModels(page_size, page_token, ListScope::All());
  }

  // ---- Replicas (see the file comment). Leases count from the database's clock, so replicas'
  // clocks need not agree. Errors beyond the Store's: UNIMPLEMENTED without a replica id.

  // This store's replica id; "" when it coordinates no replicas.
  virtual std::string replica_id() const { return ""; }
  // Claims QUEUED job `id` for this replica for `lease`, if no other replica holds it under a
  // live lease (claiming a job this replica holds renews it). Atomic: of replicas racing for a
  // job exactly one wins. NOT_FOUND for an unknown job; FAILED_PRECONDITION if it is not QUEUED;
  // ABORTED naming the holder if another replica's lease on it is live.
  virtual absl::StatusOr<JobClaim> ClaimJob(const std::string& id, absl::Duration lease);
  // Renews for `lease` every job this replica owns (expired leases too: no one took them over)
  // and returns them, oldest first. A job missing from the answer is no longer this replica's.
  virtual absl::StatusOr<std::vector<JobLease>> RenewLeases(absl::Duration lease);
  // Gives up the claim of a job that is still QUEUED. FAILED_PRECONDITION if this replica does
  // not own it or it is not QUEUED.
  virtual absl::Status ReleaseJob(const std::string& id);
  // Takes over, for `lease`, every RUNNING or CANCELLING job whose owner's lease expired (or
  // that has no owner: left by a slimd that ran without replicas); of replicas racing for one,
  // exactly one gets it. The caller then requeues or finishes each.
  virtual absl::StatusOr<std::vector<JobClaim>> TakeOverExpiredJobs(absl::Duration lease);
  // Asks the replica that owns job `id` (QUEUED, RUNNING or CANCELLING) to cancel it; the flag
  // stays until the job ends, so whoever owns it next sees it too. Returns the owner. NOT_FOUND
  // for an unknown job; FAILED_PRECONDITION if no replica owns it (cancel it directly) or it
  // has ended.
  virtual absl::StatusOr<std::string> RequestCancel(const std::string& id);
  // Delivers notifications of every replica's writes to `callback`, on a thread of the store,
  // one at a time, until StopListening; re-establishes a broken connection by itself (then
  // delivers kResync). The callback must be quick. OK and nothing delivered for stores that
  // coordinate no replicas (one process: the caller knows its own writes).
  virtual absl::Status Listen(std::function<void(const StoreNotification&)> callback);
  // Stops delivering; when it returns, no callback runs or will run. No-op if not listening.
  virtual void StopListening() {}
  // This replica's devices (names, kinds, capacities, and the jobs on them as ListDevices has
  // them), for the other replicas' admission and status pages; also marks it alive now (by the
  // database's clock).
  virtual absl::Status PublishDevices(const v1::ListDevicesResponse& devices);
  // The devices of every replica (this one included) that published within `max_age`, one
  // entry per replica, ordered by replica id.
  virtual absl::StatusOr<std::vector<v1::ListDevicesResponse>> FleetDevices(absl::Duration max_age);
};

}  // namespace slim::server
