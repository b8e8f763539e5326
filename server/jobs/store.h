// Durable state of the service: jobs with their ordered events, datasets and models. Records
// are the API's own protobuf messages (proto/slim/v1/slim.proto); the store adds no meaning to
// them beyond the indexed fields it documents. Implementations: SqliteStore (embedded, the
// default) and PostgresStore (a shared database, for fleets); tests/server/store_test.cc runs
// this contract against both.
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
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "slim/v1/slim.pb.h"

namespace slim::server {

// One page of a listing, newest first.
template <typename T>
struct Page {
  std::vector<T> items;
  std::string next_page_token;  // empty on the last page
};

class Store {
 public:
  virtual ~Store() = default;

  // Ids: "<prefix>-<6+ digit counter>", unique forever in this store (never reused after
  // deletes), e.g. NewId("job") → "job-000001".
  virtual absl::StatusOr<std::string> NewId(const std::string& prefix) = 0;

  // Jobs. CreateJob inserts `job` (its id set, last_sequence 0) and its first event
  // atomically; the event gets sequence 1 and job.last_sequence becomes 1.
  virtual absl::StatusOr<v1::Job> CreateJob(v1::Job job, v1::JobEvent first_event) = 0;
  virtual absl::StatusOr<v1::Job> GetJob(const std::string& id) = 0;
  // Replaces the stored job with `job` and appends `event` in one transaction: the event gets
  // sequence = stored last_sequence + 1, and the stored job's last_sequence is set to it (the
  // caller's value is ignored). Returns the stored job.
  virtual absl::StatusOr<v1::Job> UpdateJob(v1::Job job, v1::JobEvent event) = 0;
  // Replaces the stored job without an event (e.g. progress snapshots between events).
  virtual absl::Status SaveJob(const v1::Job& job) = 0;
  // Newest first (by creation). `states` empty = all. page_size in [1, 1000].
  virtual absl::StatusOr<Page<v1::Job>> ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                                 const std::string& page_token) = 0;
  // Every job in one of `states`, oldest first (the scheduler's and the restart's view).
  virtual absl::StatusOr<std::vector<v1::Job>> JobsInStates(const std::vector<v1::JobState>& states) = 0;
  // How many jobs are in each state (states with none are absent).
  virtual absl::StatusOr<std::map<v1::JobState, int64_t>> CountJobsByState() = 0;
  // Events of a job with sequence > after_sequence, in order, at most `limit`.
  virtual absl::StatusOr<std::vector<v1::JobEvent>> ListEvents(const std::string& job_id, int64_t after_sequence,
                                                               int limit) = 0;

  // Datasets and models: insert (ALREADY_EXISTS if the id exists), get, list newest first.
  virtual absl::Status PutDataset(const v1::Dataset& dataset) = 0;
  virtual absl::StatusOr<v1::Dataset> GetDataset(const std::string& id) = 0;
  virtual absl::StatusOr<Page<v1::Dataset>> ListDatasets(int page_size, const std::string& page_token) = 0;
  virtual absl::Status DeleteDataset(const std::string& id) = 0;
  virtual absl::Status PutModel(const v1::Model& model) = 0;
  virtual absl::StatusOr<v1::Model> GetModel(const std::string& id) = 0;
  virtual absl::StatusOr<Page<v1::Model>> ListModels(int page_size, const std::string& page_token) = 0;
};

}  // namespace slim::server
