// Private to postgres_store*.cc: the schema, the SQL helpers and the transaction runner they
// share, as inline functions in an anonymous namespace (each source file has its own copies;
// nothing here is visible to the rest of the server).
#pragma once

#include "server/jobs/postgres_store.h"

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <pqxx/pqxx>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
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

// Table names; only these constants are ever spliced into SQL.
constexpr char kDatasets[] = "datasets";
constexpr char kModels[] = "models";

// Serializes schema creation across replicas starting together ("slim_sch" in ASCII).
constexpr int64_t kSchemaLockKey = 0x736c696d5f736368;
// Transactions that fail on a broken connection before COMMIT run once more on a fresh
// connection; serialization failures and deadlocks run up to this many more times.
constexpr int kBrokenConnectionRetries = 1;
constexpr int kConflictRetries = 3;

// Version 3. Unqualified names: the tables go to the first schema of the connection's
// search_path (a dedicated schema: `options=-csearch_path=slim` in the URL).
constexpr char kSchema[] = R"sql(
CREATE TABLE schema_version (
  version INTEGER NOT NULL,
  singleton BOOLEAN NOT NULL DEFAULT TRUE PRIMARY KEY CHECK (singleton)
);
CREATE TABLE jobs (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  last_sequence BIGINT NOT NULL,
  owner TEXT,
  lease_expires_at TIMESTAMPTZ,
  cancel_requested BOOLEAN NOT NULL DEFAULT false,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  data BYTEA NOT NULL,
  tenant TEXT NOT NULL DEFAULT '',
  request_id TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
CREATE UNIQUE INDEX jobs_by_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_by_owner ON jobs (owner) WHERE owner IS NOT NULL;
CREATE TABLE events (
  job_id TEXT NOT NULL REFERENCES jobs (id),
  sequence BIGINT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  data BYTEA NOT NULL,
  PRIMARY KEY (job_id, sequence)
);
CREATE TABLE datasets (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  data BYTEA NOT NULL,
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX datasets_by_tenant ON datasets (tenant, seq);
CREATE TABLE models (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  data BYTEA NOT NULL,
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX models_by_tenant ON models (tenant, seq);
CREATE TABLE counters (
  prefix TEXT NOT NULL PRIMARY KEY,
  next BIGINT NOT NULL
);
CREATE TABLE replicas (
  id TEXT NOT NULL PRIMARY KEY,
  devices BYTEA NOT NULL,
  seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
)sql";

// Version 1 → 2: cancel requests between replicas, and finding a replica's jobs quickly.
constexpr char kUpgradeFrom1[] = R"sql(
ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX jobs_by_owner ON jobs (owner) WHERE owner IS NOT NULL;
UPDATE schema_version SET version = 2;
)sql";

// Version 2 → 3: listings by tenant (the columns are filled from the records by FillTenants),
// and the replicas' devices for fleet-wide admission.
constexpr char kUpgradeFrom2[] = R"sql(
CREATE TABLE replicas (
  id TEXT NOT NULL PRIMARY KEY,
  devices BYTEA NOT NULL,
  seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE jobs ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
ALTER TABLE datasets ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX datasets_by_tenant ON datasets (tenant, seq);
ALTER TABLE models ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX models_by_tenant ON models (tenant, seq);
UPDATE schema_version SET version = 3;
)sql";

// Version 3 → 4: CreateJob's request ids (idempotent retries).
constexpr char kUpgradeFrom3[] = R"sql(
ALTER TABLE jobs ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX jobs_by_request ON jobs (tenant, request_id) WHERE request_id IS NOT NULL;
UPDATE schema_version SET version = 4;
)sql";


constexpr int kQueued = v1::JOB_STATE_QUEUED;
constexpr int kRunning = v1::JOB_STATE_RUNNING;
constexpr int kCancelling = v1::JOB_STATE_CANCELLING;

inline bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

inline std::string StateName(int state) {
  return v1::JobState_IsValid(state) ? v1::JobState_Name(static_cast<v1::JobState>(state)) : absl::StrCat(state);
}

// A lease as a parameter of make_interval(secs => ...).
inline double Seconds(absl::Duration lease) { return absl::ToDoubleSeconds(lease); }

// libpq and server messages span lines ("ERROR:  ...\nDETAIL: ..."): one line for a status.
inline std::string OneLine(absl::string_view message) {
  std::string line = absl::StrReplaceAll(message, {{"\r", ""}, {"\n", " "}, {"\t", " "}});
  while (line.find("  ") != std::string::npos) line = absl::StrReplaceAll(line, {{"  ", " "}});
  return std::string(absl::StripAsciiWhitespace(line));
}

inline std::string Describe(absl::string_view what, absl::string_view message) {
  return absl::StrCat("postgres: ", what, ": ", OneLine(message));
}

template <typename T>
inline absl::StatusOr<T> Parse(absl::string_view data, absl::string_view noun) {
  return store_helpers::Parse<T>(data, "postgres", noun);
}

// A bytea parameter (sent in binary, no escaping).
inline pqxx::binarystring Bytes(const std::string& data) { return pqxx::binarystring(data.data(), data.size()); }

// Calls `use` with the bytes of a bytea column.
inline absl::Status WithBytes(const pqxx::field& field, const std::function<absl::Status(absl::string_view)>& use) {
  const pqxx::binarystring bytes(field);
  return use(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

// The record in a bytea column.
template <typename T>
inline absl::StatusOr<T> ParseField(const pqxx::field& field, absl::string_view noun) {
  const pqxx::binarystring bytes(field);
  return Parse<T>(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), noun);
}

// Fills `table`'s tenant column from its records (version 2 → 3).
template <typename T>
inline absl::Status FillTenants(pqxx::transaction_base& tx, const char* table, absl::string_view noun) {
  const pqxx::result rows = tx.exec(absl::StrCat("SELECT id, data FROM ", table));
  for (const pqxx::row& row : rows) {
    ASSIGN_OR_RETURN(const T record, ParseField<T>(row[1], noun));
    if (record.tenant().empty()) continue;
    tx.exec_params(absl::StrCat("UPDATE ", table, " SET tenant = $2 WHERE id = $1"), row[0].as<std::string>(),
                   record.tenant());
  }
  return absl::OkStatus();
}

inline absl::Status CheckSchemaVersion(int64_t version) {
  if (version > PostgresStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("the database has schema version ", version,
                                                      ", newer than this slimd supports (",
                                                      PostgresStore::kSchemaVersion, "); use a newer slimd"));
  }
  return absl::OkStatus();
}

// Writes the job row (data, state, last_sequence from `job`). The row is locked.
inline void WriteJob(pqxx::transaction_base& tx, const v1::Job& job) {
  tx.exec_params("UPDATE jobs SET state = $2, last_sequence = $3, data = $4, updated_at = now() WHERE id = $1",
                 job.id(), static_cast<int>(job.state()), job.last_sequence(), Bytes(Serialize(job)));
}

// After a transition to QUEUED or an end: the job has no owner any more; a pending cancel
// request stays with a queued job (its next owner acts on it) and goes with an ended one. A
// QUEUED job is announced as claimable.
inline void ReleaseIfDone(pqxx::transaction_base& tx, const v1::Job& job) {
  if (job.state() == v1::JOB_STATE_QUEUED) {
    tx.exec_params("UPDATE jobs SET owner = NULL, lease_expires_at = NULL WHERE id = $1", job.id());
    tx.exec_params("SELECT pg_notify($1, $2)", std::string(PostgresStore::kControlChannel),
                   absl::StrCat("queued:", job.id()));
  } else if (IsTerminal(job.state())) {
    tx.exec_params("UPDATE jobs SET owner = NULL, lease_expires_at = NULL, cancel_requested = false WHERE id = $1",
                   job.id());
  }
}

// Appends the event and notifies kEventsChannel (delivered when the transaction commits).
inline void InsertEvent(pqxx::transaction_base& tx, const std::string& job_id, const v1::JobEvent& event) {
  tx.exec_params("INSERT INTO events (job_id, sequence, data) VALUES ($1, $2, $3)", job_id, event.sequence(),
                 Bytes(Serialize(event)));
  tx.exec_params("SELECT pg_notify($1, $2)", std::string(PostgresStore::kEventsChannel),
                 absl::StrCat(job_id, ":", event.sequence()));
}

// Locks the job row until the transaction ends and returns its last_sequence; NOT_FOUND if
// absent. The lock is what serializes UpdateJob/SaveJob of one job across connections.
// With a replica id (`replica` non-empty) it also fences: FAILED_PRECONDITION if another
// replica owns the job, ABORTED if `expected_sequence` is not the stored last_sequence.
inline absl::StatusOr<int64_t> LockJob(pqxx::transaction_base& tx, const std::string& id, const std::string& replica,
                                int64_t expected_sequence) {
  const pqxx::result r = tx.exec_params("SELECT last_sequence, owner FROM jobs WHERE id = $1 FOR UPDATE", id);
  if (r.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  const int64_t last = r[0][0].as<int64_t>();
  if (replica.empty()) return last;
  if (!r[0][1].is_null() && r[0][1].as<std::string>() != replica) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is owned by replica ", r[0][1].as<std::string>(), ", not by ", replica));
  }
  if (last != expected_sequence) {
    return absl::AbortedError(absl::StrCat("job ", id, " changed concurrently: its last event is ", last,
                                           ", the update was based on ", expected_sequence));
  }
  return last;
}

// One run of a transaction: its status, whether the connection is unusable afterwards, and
// whether running it again may succeed.
enum class Retry { kNo, kBrokenConnection, kConflict };
struct Outcome {
  absl::Status status;
  bool broken = false;
  Retry retry = Retry::kNo;
};

inline bool IsConnectionState(const std::string& sqlstate) {
  // Class 08: connection exception; 57P01-03: the server is shutting down or starting.
  return sqlstate.rfind("08", 0) == 0 || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03";
}

inline Outcome RunOnce(pqxx::connection& connection, absl::string_view what,
                const std::function<absl::Status(pqxx::transaction_base&)>& body) {
  try {
    pqxx::work tx(connection);
    absl::Status status = body(tx);
    if (!status.ok()) {
      try {
        tx.abort();
      } catch (const std::exception&) {
        return {std::move(status), /*broken=*/true};
      }
      return {std::move(status)};
    }
    tx.commit();
    return {absl::OkStatus()};
  } catch (const pqxx::in_doubt_error& e) {
    return {absl::UnavailableError(
                Describe(what, absl::StrCat("connection lost during COMMIT, outcome unknown: ", e.what()))),
            /*broken=*/true};
  } catch (const pqxx::broken_connection& e) {
    return {absl::UnavailableError(Describe(what, e.what())), /*broken=*/true, Retry::kBrokenConnection};
  } catch (const pqxx::sql_error& e) {
    if (IsConnectionState(e.sqlstate())) {
      return {absl::UnavailableError(Describe(what, e.what())), /*broken=*/true, Retry::kBrokenConnection};
    }
    if (e.sqlstate() == "40001" || e.sqlstate() == "40P01") {
      return {absl::AbortedError(Describe(what, e.what())), /*broken=*/false, Retry::kConflict};
    }
    return {absl::InternalError(Describe(what, e.what()))};
  } catch (const std::exception& e) {
    // pqxx::failure without a connection problem, conversion errors: a bug or a corrupt row.
    // The connection may be mid-protocol: do not reuse it.
    return {absl::InternalError(Describe(what, e.what())), /*broken=*/true};
  }
}

}  // namespace
}  // namespace slim::server
