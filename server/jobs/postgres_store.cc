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
  tenant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);
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


constexpr int kQueued = v1::JOB_STATE_QUEUED;
constexpr int kRunning = v1::JOB_STATE_RUNNING;
constexpr int kCancelling = v1::JOB_STATE_CANCELLING;

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

std::string StateName(int state) {
  return v1::JobState_IsValid(state) ? v1::JobState_Name(static_cast<v1::JobState>(state)) : absl::StrCat(state);
}

// A lease as a parameter of make_interval(secs => ...).
double Seconds(absl::Duration lease) { return absl::ToDoubleSeconds(lease); }

// libpq and server messages span lines ("ERROR:  ...\nDETAIL: ..."): one line for a status.
std::string OneLine(absl::string_view message) {
  std::string line = absl::StrReplaceAll(message, {{"\r", ""}, {"\n", " "}, {"\t", " "}});
  while (line.find("  ") != std::string::npos) line = absl::StrReplaceAll(line, {{"  ", " "}});
  return std::string(absl::StripAsciiWhitespace(line));
}

std::string Describe(absl::string_view what, absl::string_view message) {
  return absl::StrCat("postgres: ", what, ": ", OneLine(message));
}

template <typename T>
absl::StatusOr<T> Parse(absl::string_view data, absl::string_view noun) {
  return store_helpers::Parse<T>(data, "postgres", noun);
}

// A bytea parameter (sent in binary, no escaping).
pqxx::binarystring Bytes(const std::string& data) { return pqxx::binarystring(data.data(), data.size()); }

// Calls `use` with the bytes of a bytea column.
absl::Status WithBytes(const pqxx::field& field, const std::function<absl::Status(absl::string_view)>& use) {
  const pqxx::binarystring bytes(field);
  return use(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

// The record in a bytea column.
template <typename T>
absl::StatusOr<T> ParseField(const pqxx::field& field, absl::string_view noun) {
  const pqxx::binarystring bytes(field);
  return Parse<T>(absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), noun);
}

// Fills `table`'s tenant column from its records (version 2 → 3).
template <typename T>
absl::Status FillTenants(pqxx::transaction_base& tx, const char* table, absl::string_view noun) {
  const pqxx::result rows = tx.exec(absl::StrCat("SELECT id, data FROM ", table));
  for (const pqxx::row& row : rows) {
    ASSIGN_OR_RETURN(const T record, ParseField<T>(row[1], noun));
    if (record.tenant().empty()) continue;
    tx.exec_params(absl::StrCat("UPDATE ", table, " SET tenant = $2 WHERE id = $1"), row[0].as<std::string>(),
                   record.tenant());
  }
  return absl::OkStatus();
}

absl::Status CheckSchemaVersion(int64_t version) {
  if (version > PostgresStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("the database has schema version ", version,
                                                      ", newer than this slimd supports (",
                                                      PostgresStore::kSchemaVersion, "); use a newer slimd"));
  }
  return absl::OkStatus();
}

// Writes the job row (data, state, last_sequence from `job`). The row is locked.
void WriteJob(pqxx::transaction_base& tx, const v1::Job& job) {
  tx.exec_params("UPDATE jobs SET state = $2, last_sequence = $3, data = $4, updated_at = now() WHERE id = $1",
                 job.id(), static_cast<int>(job.state()), job.last_sequence(), Bytes(Serialize(job)));
}

// After a transition to QUEUED or an end: the job has no owner any more; a pending cancel
// request stays with a queued job (its next owner acts on it) and goes with an ended one. A
// QUEUED job is announced as claimable.
void ReleaseIfDone(pqxx::transaction_base& tx, const v1::Job& job) {
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
void InsertEvent(pqxx::transaction_base& tx, const std::string& job_id, const v1::JobEvent& event) {
  tx.exec_params("INSERT INTO events (job_id, sequence, data) VALUES ($1, $2, $3)", job_id, event.sequence(),
                 Bytes(Serialize(event)));
  tx.exec_params("SELECT pg_notify($1, $2)", std::string(PostgresStore::kEventsChannel),
                 absl::StrCat(job_id, ":", event.sequence()));
}

// Locks the job row until the transaction ends and returns its last_sequence; NOT_FOUND if
// absent. The lock is what serializes UpdateJob/SaveJob of one job across connections.
// With a replica id (`replica` non-empty) it also fences: FAILED_PRECONDITION if another
// replica owns the job, ABORTED if `expected_sequence` is not the stored last_sequence.
absl::StatusOr<int64_t> LockJob(pqxx::transaction_base& tx, const std::string& id, const std::string& replica,
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

bool IsConnectionState(const std::string& sqlstate) {
  // Class 08: connection exception; 57P01-03: the server is shutting down or starting.
  return sqlstate.rfind("08", 0) == 0 || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03";
}

Outcome RunOnce(pqxx::connection& connection, absl::string_view what,
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

struct PostgresStore::Connection {
  explicit Connection(const std::string& url) : pq(url) {}
  pqxx::connection pq;
};

absl::StatusOr<std::unique_ptr<PostgresStore>> PostgresStore::Open(const std::string& url,
                                                                   PostgresStoreOptions options) {
  if (options.pool_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("pool_size: must be at least 1, got ", options.pool_size));
  }
  // libpq reports a malformed string only when connecting, as a connection failure: check it
  // first so that a typo is INVALID_ARGUMENT, not UNAVAILABLE.
  char* error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &error);
  if (parsed == nullptr) {
    const std::string message = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    return absl::InvalidArgumentError(Describe("malformed connection string", message));
  }
  PQconninfoFree(parsed);
  const std::string& replica = options.replica_id;
  if (replica.size() > 63 || std::any_of(replica.begin(), replica.end(), [](char c) {
        return !absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-';
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat("replica_id: at most 63 characters of A-Z a-z 0-9 . _ -, got '", replica, "'"));
  }
  std::unique_ptr<PostgresStore> store(new PostgresStore(url, options.pool_size, replica));
  RETURN_IF_ERROR(store->Initialize());
  return store;
}

PostgresStore::PostgresStore(std::string url, int pool_size, std::string replica_id)
    : url_(std::move(url)), pool_size_(pool_size), replica_id_(std::move(replica_id)) {}

PostgresStore::~PostgresStore() { StopListening(); }

absl::Status PostgresStore::Initialize() {
  return Transact("opening the database", [](pqxx::transaction_base& tx) -> absl::Status {
    tx.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLockKey);
    if (tx.exec1("SELECT to_regclass('schema_version') IS NOT NULL")[0].as<bool>()) {
      const pqxx::result version = tx.exec("SELECT version FROM schema_version");
      if (version.size() != 1) {
        return absl::InternalError(absl::StrCat("postgres: schema_version has ", version.size(), " rows instead of 1"));
      }
      const int64_t stored = version[0][0].as<int64_t>();
      RETURN_IF_ERROR(CheckSchemaVersion(stored));
      if (stored == 1) tx.exec(kUpgradeFrom1);
      if (stored <= 2) {
        tx.exec(kUpgradeFrom2);
        RETURN_IF_ERROR(FillTenants<v1::Job>(tx, "jobs", "job"));
        RETURN_IF_ERROR(FillTenants<v1::Dataset>(tx, "datasets", "dataset"));
        RETURN_IF_ERROR(FillTenants<v1::Model>(tx, "models", "model"));
      }
      return absl::OkStatus();
    }
    tx.exec(kSchema);
    tx.exec_params("INSERT INTO schema_version (version) VALUES ($1)", kSchemaVersion);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------------
// Connections and transactions

absl::StatusOr<std::unique_ptr<PostgresStore::Connection>> PostgresStore::Acquire() {
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !idle_.empty() || open_ < pool_size_; };
    mu_.Await(absl::Condition(&available));
    if (!idle_.empty()) {
      std::unique_ptr<Connection> connection = std::move(idle_.back());
      idle_.pop_back();
      return connection;
    }
    ++open_;  // reserve the slot; connect without holding the lock
  }
  std::string failure;
  try {
    return std::make_unique<Connection>(url_);
  } catch (const std::exception& e) {  // pqxx::broken_connection, or a libpq failure
    failure = e.what();
  }
  absl::MutexLock lock(&mu_);
  --open_;
  return absl::UnavailableError(OneLine(absl::StrCat("cannot connect: ", failure)));
}

void PostgresStore::Release(std::unique_ptr<Connection> connection, bool broken) {
  std::vector<std::unique_ptr<Connection>> closing;  // closed after unlocking
  absl::MutexLock lock(&mu_);
  if (!broken) {
    idle_.push_back(std::move(connection));
    return;
  }
  closing.push_back(std::move(connection));
  for (std::unique_ptr<Connection>& idle : idle_) closing.push_back(std::move(idle));
  idle_.clear();
  open_ -= static_cast<int>(closing.size());
}

absl::Status PostgresStore::Transact(absl::string_view what, const Body& body) {
  int broken_retries = kBrokenConnectionRetries;
  int conflict_retries = kConflictRetries;
  while (true) {
    absl::StatusOr<std::unique_ptr<Connection>> connection = Acquire();
    if (!connection.ok()) return absl::UnavailableError(Describe(what, connection.status().message()));
    Outcome outcome = RunOnce((*connection)->pq, what, body);
    Release(*std::move(connection), outcome.broken);
    if (outcome.retry == Retry::kBrokenConnection && broken_retries-- > 0) continue;
    if (outcome.retry == Retry::kConflict && conflict_retries-- > 0) continue;
    return outcome.status;
  }
}

// ---------------------------------------------------------------------------------------------
// Shared record helpers

absl::StatusOr<std::string> PostgresStore::GetBlob(const char* table, const char* noun, const std::string& id) {
  std::string data;
  RETURN_IF_ERROR(Transact(absl::StrCat("reading ", noun, " ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r = tx.exec_params(absl::StrCat("SELECT data FROM ", table, " WHERE id = $1"), id);
    if (r.empty()) return absl::NotFoundError(absl::StrCat(noun, " ", id, " not found"));
    data = pqxx::binarystring(r[0][0]).str();
    return absl::OkStatus();
  }));
  return data;
}

absl::Status PostgresStore::InsertRecord(const char* table, const char* noun, const std::string& id,
                                         const std::string& tenant, const std::string& data) {
  return Transact(absl::StrCat("inserting ", noun, " ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r = tx.exec_params(
        absl::StrCat("INSERT INTO ", table, " (id, data, tenant) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING"), id,
        Bytes(data), tenant);
    if (r.affected_rows() == 0) return absl::AlreadyExistsError(absl::StrCat(noun, " ", id, " already exists"));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::string> PostgresStore::ListBlobs(const char* table, const std::string& state_filter,
                                                     const ListScope& scope, bool with_shared, int page_size,
                                                     const std::string& page_token,
                                                     const std::function<absl::Status(absl::string_view)>& add) {
  RETURN_IF_ERROR(CheckPageSize(page_size));
  ASSIGN_OR_RETURN(const int64_t before, ParsePageToken(page_token));
  // All tenants: a filter that holds, so that the statement takes the same parameters.
  const std::string tenant_filter =
      scope.all_tenants ? " AND $3::text IS NOT NULL" : (with_shared ? " AND tenant IN ($3, '')" : " AND tenant = $3");
  pqxx::result rows;
  RETURN_IF_ERROR(Transact(absl::StrCat("listing ", table), [&](pqxx::transaction_base& tx) -> absl::Status {
    rows = tx.exec_params(absl::StrCat("SELECT seq, data FROM ", table, " WHERE seq < $1", state_filter, tenant_filter,
                                       " ORDER BY seq DESC LIMIT $2"),
                          before, static_cast<int64_t>(page_size) + 1,  // one extra row: is there a next page?
                          scope.tenant);
    return absl::OkStatus();
  }));
  // The result holds its rows on the client: parse after the connection went back.
  for (int i = 0; i < static_cast<int>(rows.size()); ++i) {
    if (i == page_size) return absl::StrCat(rows[i - 1][0].as<int64_t>());
    RETURN_IF_ERROR(WithBytes(rows[i][1], add));
  }
  return std::string();
}

// ---------------------------------------------------------------------------------------------
// Ids

absl::StatusOr<std::string> PostgresStore::NewId(const std::string& prefix) {
  RETURN_IF_ERROR(CheckId(prefix, "prefix"));
  int64_t number = 0;
  RETURN_IF_ERROR(Transact(absl::StrCat("issuing a ", prefix, " id"), [&](pqxx::transaction_base& tx) {
    number = tx.exec_params1(
                   "INSERT INTO counters (prefix, next) VALUES ($1, 1) "
                   "ON CONFLICT (prefix) DO UPDATE SET next = counters.next + 1 RETURNING next",
                   prefix)[0]
                 .as<int64_t>();
    return absl::OkStatus();
  }));
  return store_helpers::FormatId(prefix, number);
}

// ---------------------------------------------------------------------------------------------
// Jobs

absl::StatusOr<v1::Job> PostgresStore::CreateJob(v1::Job job, v1::JobEvent first_event) {
  RETURN_IF_ERROR(CheckId(job.id(), "job.id"));
  job.set_last_sequence(1);
  first_event.set_sequence(1);
  RETURN_IF_ERROR(Transact(absl::StrCat("creating job ", job.id()), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r = tx.exec_params(
        "INSERT INTO jobs (id, state, last_sequence, data, tenant) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (id) DO NOTHING",
        job.id(), static_cast<int>(job.state()), job.last_sequence(), Bytes(Serialize(job)), job.tenant());
    if (r.affected_rows() == 0) return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " already exists"));
    InsertEvent(tx, job.id(), first_event);
    if (job.state() == v1::JOB_STATE_QUEUED) {
      tx.exec_params("SELECT pg_notify($1, $2)", std::string(kControlChannel), absl::StrCat("queued:", job.id()));
    }
    return absl::OkStatus();
  }));
  return job;
}

absl::StatusOr<v1::Job> PostgresStore::GetJob(const std::string& id) {
  ASSIGN_OR_RETURN(const std::string data, GetBlob("jobs", "job", id));
  return Parse<v1::Job>(data, "job");
}

absl::StatusOr<v1::Job> PostgresStore::UpdateJob(v1::Job job, v1::JobEvent event) {
  v1::Job stored;
  RETURN_IF_ERROR(Transact(absl::StrCat("updating job ", job.id()), [&](pqxx::transaction_base& tx) -> absl::Status {
    ASSIGN_OR_RETURN(const int64_t last, LockJob(tx, job.id(), replica_id_, job.last_sequence()));
    stored = job;  // `job` stays as given (the fence compares its sequence) should this run again
    stored.set_last_sequence(last + 1);
    event.set_sequence(last + 1);
    WriteJob(tx, stored);
    ReleaseIfDone(tx, stored);
    InsertEvent(tx, stored.id(), event);
    return absl::OkStatus();
  }));
  return stored;
}

absl::Status PostgresStore::SaveJob(const v1::Job& job) {
  return Transact(absl::StrCat("saving job ", job.id()), [&](pqxx::transaction_base& tx) -> absl::Status {
    ASSIGN_OR_RETURN(const int64_t last, LockJob(tx, job.id(), replica_id_, job.last_sequence()));
    if (last == job.last_sequence()) {
      WriteJob(tx, job);
    } else {
      v1::Job copy = job;  // a snapshot taken before the newest event: keep the stored sequence
      copy.set_last_sequence(last);
      WriteJob(tx, copy);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<Page<v1::Job>> PostgresStore::ListJobs(const std::vector<v1::JobState>& states, int page_size,
                                                      const std::string& page_token, const ListScope& scope) {
  Page<v1::Job> page;
  ASSIGN_OR_RETURN(page.next_page_token, ListBlobs("jobs", StateFilter(states), scope, false, page_size, page_token,
                                                   [&](absl::string_view data) -> absl::Status {
                                                     ASSIGN_OR_RETURN(v1::Job job, Parse<v1::Job>(data, "job"));
                                                     page.items.push_back(std::move(job));
                                                     return absl::OkStatus();
                                                   }));
  return page;
}

absl::StatusOr<std::vector<v1::Job>> PostgresStore::JobsInStates(const std::vector<v1::JobState>& states) {
  std::vector<v1::Job> jobs;
  if (states.empty()) return jobs;
  pqxx::result rows;
  RETURN_IF_ERROR(Transact("listing jobs by state", [&](pqxx::transaction_base& tx) {
    rows = tx.exec(absl::StrCat("SELECT data FROM jobs WHERE TRUE", StateFilter(states), " ORDER BY seq ASC"));
    return absl::OkStatus();
  }));
  for (const pqxx::row& row : rows) {
    ASSIGN_OR_RETURN(v1::Job job, ParseField<v1::Job>(row[0], "job"));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::StatusOr<std::map<v1::JobState, int64_t>> PostgresStore::CountJobsByState() {
  std::map<v1::JobState, int64_t> counts;
  RETURN_IF_ERROR(Transact("counting jobs by state", [&](pqxx::transaction_base& tx) {
    counts.clear();
    for (const pqxx::row& row : tx.exec("SELECT state, COUNT(*) FROM jobs GROUP BY state")) {
      counts[static_cast<v1::JobState>(row[0].as<int>())] = row[1].as<int64_t>();
    }
    return absl::OkStatus();
  }));
  return counts;
}

absl::StatusOr<std::vector<v1::JobEvent>> PostgresStore::ListEvents(const std::string& job_id, int64_t after_sequence,
                                                                    int limit) {
  if (limit < 1) return absl::InvalidArgumentError(absl::StrCat("limit: must be at least 1, got ", limit));
  pqxx::result rows;
  RETURN_IF_ERROR(
      Transact(absl::StrCat("listing events of job ", job_id), [&](pqxx::transaction_base& tx) -> absl::Status {
        if (tx.exec_params("SELECT 1 FROM jobs WHERE id = $1", job_id).empty()) {
          return absl::NotFoundError(absl::StrCat("job ", job_id, " not found"));
        }
        rows =
            tx.exec_params("SELECT data FROM events WHERE job_id = $1 AND sequence > $2 ORDER BY sequence ASC LIMIT $3",
                           job_id, after_sequence, limit);
        return absl::OkStatus();
      }));
  std::vector<v1::JobEvent> events;
  for (const pqxx::row& row : rows) {
    ASSIGN_OR_RETURN(v1::JobEvent event, ParseField<v1::JobEvent>(row[0], "event"));
    events.push_back(std::move(event));
  }
  return events;
}

// ---------------------------------------------------------------------------------------------
// Datasets and models

absl::Status PostgresStore::PutDataset(const v1::Dataset& dataset) {
  RETURN_IF_ERROR(CheckId(dataset.id(), "dataset.id"));
  return InsertRecord(kDatasets, "dataset", dataset.id(), dataset.tenant(), Serialize(dataset));
}

absl::StatusOr<v1::Dataset> PostgresStore::GetDataset(const std::string& id) {
  ASSIGN_OR_RETURN(const std::string data, GetBlob(kDatasets, "dataset", id));
  return Parse<v1::Dataset>(data, "dataset");
}

absl::StatusOr<Page<v1::Dataset>> PostgresStore::ListDatasets(int page_size, const std::string& page_token,
                                                              const ListScope& scope) {
  Page<v1::Dataset> page;
  ASSIGN_OR_RETURN(page.next_page_token,
                   ListBlobs(kDatasets, "", scope, false, page_size, page_token, [&](absl::string_view data) -> absl::Status {
                     ASSIGN_OR_RETURN(v1::Dataset dataset, Parse<v1::Dataset>(data, "dataset"));
                     page.items.push_back(std::move(dataset));
                     return absl::OkStatus();
                   }));
  return page;
}

absl::Status PostgresStore::DeleteDataset(const std::string& id) {
  return Transact(absl::StrCat("deleting dataset ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    if (tx.exec_params("DELETE FROM datasets WHERE id = $1", id).affected_rows() == 0) {
      return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
    }
    return absl::OkStatus();
  });
}

absl::Status PostgresStore::PutModel(const v1::Model& model) {
  RETURN_IF_ERROR(CheckId(model.id(), "model.id"));
  return InsertRecord(kModels, "model", model.id(), model.tenant(), Serialize(model));
}

absl::StatusOr<v1::Model> PostgresStore::GetModel(const std::string& id) {
  ASSIGN_OR_RETURN(const std::string data, GetBlob(kModels, "model", id));
  return Parse<v1::Model>(data, "model");
}

absl::StatusOr<Page<v1::Model>> PostgresStore::ListModels(int page_size, const std::string& page_token,
                                                          const ListScope& scope) {
  Page<v1::Model> page;
  ASSIGN_OR_RETURN(page.next_page_token,
                   ListBlobs(kModels, "", scope, true, page_size, page_token, [&](absl::string_view data) -> absl::Status {
                     ASSIGN_OR_RETURN(v1::Model model, Parse<v1::Model>(data, "model"));
                     page.items.push_back(std::move(model));
                     return absl::OkStatus();
                   }));
  return page;
}

// ---------------------------------------------------------------------------------------------
// Replicas

absl::Status PostgresStore::CheckReplica(absl::Duration lease) const {
  if (replica_id_.empty()) {
    return absl::UnimplementedError("postgres: this store was opened without a replica id: it coordinates no replicas");
  }
  if (lease <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("lease: must be positive, got ", absl::FormatDuration(lease)));
  }
  return absl::OkStatus();
}

absl::StatusOr<JobClaim> PostgresStore::ClaimJob(const std::string& id, absl::Duration lease) {
  RETURN_IF_ERROR(CheckReplica(lease));
  RETURN_IF_ERROR(CheckId(id, "id"));
  JobClaim claim;
  RETURN_IF_ERROR(Transact(absl::StrCat("claiming job ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r = tx.exec_params(
        "UPDATE jobs SET owner = $2, lease_expires_at = now() + make_interval(secs => $3) "
        "WHERE id = $1 AND state = $4 AND (owner IS NULL OR owner = $2 OR lease_expires_at < now()) "
        "RETURNING data, cancel_requested",
        id, replica_id_, Seconds(lease), kQueued);
    if (!r.empty()) {
      ASSIGN_OR_RETURN(claim.job, ParseField<v1::Job>(r[0][0], "job"));
      claim.cancel_requested = r[0][1].as<bool>();
      return absl::OkStatus();
    }
    const pqxx::result row = tx.exec_params("SELECT state, owner FROM jobs WHERE id = $1", id);
    if (row.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    const int state = row[0][0].as<int>();
    if (state != kQueued) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(state), ", not queued"));
    }
    return absl::AbortedError(absl::StrCat("job ", id, " is claimed by replica ", row[0][1].c_str()));
  }));
  return claim;
}

absl::StatusOr<std::vector<JobLease>> PostgresStore::RenewLeases(absl::Duration lease) {
  RETURN_IF_ERROR(CheckReplica(lease));
  pqxx::result rows;
  RETURN_IF_ERROR(Transact("renewing leases", [&](pqxx::transaction_base& tx) {
    rows = tx.exec_params(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $2) WHERE owner = $1 "
        "RETURNING seq, id, state, cancel_requested",
        replica_id_, Seconds(lease));
    return absl::OkStatus();
  }));
  std::vector<std::pair<int64_t, JobLease>> ordered;
  for (const pqxx::row& row : rows) {
    JobLease lease_of_job;
    lease_of_job.job_id = row[1].as<std::string>();
    lease_of_job.state = static_cast<v1::JobState>(row[2].as<int>());
    lease_of_job.cancel_requested = row[3].as<bool>();
    ordered.emplace_back(row[0].as<int64_t>(), std::move(lease_of_job));
  }
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<JobLease> leases;
  for (auto& [seq, l] : ordered) leases.push_back(std::move(l));
  return leases;
}

absl::Status PostgresStore::PublishDevices(const v1::ListDevicesResponse& devices) {
  RETURN_IF_ERROR(CheckReplica());
  return Transact("publishing this replica's devices", [&](pqxx::transaction_base& tx) {
    tx.exec_params(
        "INSERT INTO replicas (id, devices, seen_at) VALUES ($1, $2, now()) "
        "ON CONFLICT (id) DO UPDATE SET devices = excluded.devices, seen_at = now()",
        replica_id_, Bytes(Serialize(devices)));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<v1::ListDevicesResponse>> PostgresStore::FleetDevices(absl::Duration max_age) {
  RETURN_IF_ERROR(CheckReplica());
  pqxx::result rows;
  RETURN_IF_ERROR(Transact("reading the replicas' devices", [&](pqxx::transaction_base& tx) {
    rows = tx.exec_params(
        "SELECT devices FROM replicas WHERE seen_at > now() - make_interval(secs => $1) ORDER BY id",
        Seconds(max_age));
    return absl::OkStatus();
  }));
  std::vector<v1::ListDevicesResponse> fleet;
  for (const pqxx::row& row : rows) {
    ASSIGN_OR_RETURN(v1::ListDevicesResponse devices, ParseField<v1::ListDevicesResponse>(row[0], "devices"));
    fleet.push_back(std::move(devices));
  }
  return fleet;
}

absl::Status PostgresStore::ReleaseJob(const std::string& id) {
  RETURN_IF_ERROR(CheckReplica());
  RETURN_IF_ERROR(CheckId(id, "id"));
  return Transact(absl::StrCat("releasing job ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r = tx.exec_params(
        "UPDATE jobs SET owner = NULL, lease_expires_at = NULL WHERE id = $1 AND owner = $2 AND state = $3", id,
        replica_id_, kQueued);
    if (r.affected_rows() > 0) {
      tx.exec_params("SELECT pg_notify($1, $2)", std::string(kControlChannel), absl::StrCat("queued:", id));
      return absl::OkStatus();
    }
    const pqxx::result row = tx.exec_params("SELECT state, owner FROM jobs WHERE id = $1", id);
    if (row.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(row[0][0].as<int>()),
                                                      " and owned by ", row[0][1].is_null() ? "no replica" : "replica ",
                                                      row[0][1].is_null() ? "" : row[0][1].c_str(), ", not queued by ",
                                                      replica_id_));
  });
}

absl::StatusOr<std::vector<JobClaim>> PostgresStore::TakeOverExpiredJobs(absl::Duration lease) {
  RETURN_IF_ERROR(CheckReplica(lease));
  pqxx::result rows;
  RETURN_IF_ERROR(Transact("taking over jobs of expired leases", [&](pqxx::transaction_base& tx) {
    // SKIP LOCKED: a row another replica is taking over right now is its; READ COMMITTED
    // re-checks the condition on rows whose owner changed since the statement began.
    rows = tx.exec_params(
        "WITH expired AS ("
        "  SELECT id, owner FROM jobs WHERE state IN ($3, $4) AND"
        "    (owner IS NULL OR (owner <> $1 AND lease_expires_at < now()))"
        "  ORDER BY seq FOR UPDATE SKIP LOCKED) "
        "UPDATE jobs SET owner = $1, lease_expires_at = now() + make_interval(secs => $2) FROM expired "
        "WHERE jobs.id = expired.id RETURNING jobs.seq, jobs.data, expired.owner, jobs.cancel_requested",
        replica_id_, Seconds(lease), kRunning, kCancelling);
    return absl::OkStatus();
  }));
  std::vector<std::pair<int64_t, JobClaim>> ordered;
  for (const pqxx::row& row : rows) {
    JobClaim claim;
    ASSIGN_OR_RETURN(claim.job, ParseField<v1::Job>(row[1], "job"));
    claim.previous_owner = row[2].is_null() ? "" : row[2].as<std::string>();
    claim.cancel_requested = row[3].as<bool>();
    ordered.emplace_back(row[0].as<int64_t>(), std::move(claim));
  }
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<JobClaim> claims;
  for (auto& [seq, claim] : ordered) claims.push_back(std::move(claim));
  return claims;
}

absl::StatusOr<std::string> PostgresStore::RequestCancel(const std::string& id) {
  RETURN_IF_ERROR(CheckReplica());
  RETURN_IF_ERROR(CheckId(id, "id"));
  std::string owner;
  RETURN_IF_ERROR(
      Transact(absl::StrCat("requesting cancellation of job ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
        const pqxx::result r = tx.exec_params(
            "UPDATE jobs SET cancel_requested = true WHERE id = $1 AND owner IS NOT NULL AND state IN ($2, $3, $4) "
            "RETURNING owner",
            id, kQueued, kRunning, kCancelling);
        if (!r.empty()) {
          owner = r[0][0].as<std::string>();
          tx.exec_params("SELECT pg_notify($1, $2)", std::string(kControlChannel), absl::StrCat("cancel:", id));
          return absl::OkStatus();
        }
        const pqxx::result row = tx.exec_params("SELECT state FROM jobs WHERE id = $1", id);
        if (row.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
        const int state = row[0][0].as<int>();
        if (state == kQueued || state == kRunning || state == kCancelling) {
          return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(state), " and owned by no replica"));
        }
        return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", StateName(state), ": it has ended"));
      }));
  return owner;
}

// ---------------------------------------------------------------------------------------------
// Notifications

namespace {

// One LISTEN channel on the listener's connection; turns payloads into notifications.
class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection_base& connection, const std::string& channel,
           const std::function<void(const StoreNotification&)>& deliver)
      : pqxx::notification_receiver(connection, channel), deliver_(deliver) {}

  void operator()(const std::string& payload, int) override {
    StoreNotification n;
    if (channel() == PostgresStore::kEventsChannel) {
      const size_t colon = payload.rfind(':');
      if (colon == std::string::npos) return;
      n.kind = StoreNotification::Kind::kEvent;
      n.job_id = payload.substr(0, colon);
      n.sequence = std::atoll(payload.c_str() + colon + 1);
    } else if (payload.rfind("queued:", 0) == 0) {
      n.kind = StoreNotification::Kind::kQueued;
      n.job_id = payload.substr(std::strlen("queued:"));
    } else if (payload.rfind("cancel:", 0) == 0) {
      n.kind = StoreNotification::Kind::kCancelRequested;
      n.job_id = payload.substr(std::strlen("cancel:"));
    } else {
      return;  // a newer slimd's kind: not ours to interpret
    }
    deliver_(n);
  }

 private:
  const std::function<void(const StoreNotification&)>& deliver_;
};

// A query every this often finds a connection that broke without the socket saying so.
constexpr auto kListenCheckInterval = std::chrono::seconds(5);
// How long the loop waits for notifications at a time (the latency of StopListening).
constexpr long kListenPollMicros = 200000;

}  // namespace

absl::Status PostgresStore::Listen(std::function<void(const StoreNotification&)> callback) {
  absl::MutexLock lock(&listen_mu_);
  if (listener_.joinable()) return absl::FailedPreconditionError("postgres: already listening");
  stop_listening_ = false;
  absl::Status first_status;
  absl::Notification first;
  listener_ = std::thread([this, callback = std::move(callback), &first_status, &first] {
    ListenLoop(callback, &first_status, &first);
  });
  first.WaitForNotification();
  if (!first_status.ok()) {
    stop_listening_ = true;
    listener_.join();
  }
  return first_status;
}

void PostgresStore::StopListening() {
  absl::MutexLock lock(&listen_mu_);
  if (!listener_.joinable()) return;
  stop_listening_ = true;
  listener_.join();
}

void PostgresStore::ListenLoop(std::function<void(const StoreNotification&)> callback, absl::Status* first_status,
                               absl::Notification* first) {
  bool connected_before = false;
  bool failing = false;  // log one line per outage, not one per attempt
  while (!stop_listening_) {
    try {
      pqxx::connection connection(url_);
      Receiver events(connection, kEventsChannel, callback);
      Receiver control(connection, kControlChannel, callback);
      if (first != nullptr) {
        first->Notify();  // *first_status stays OK
        first = nullptr;
      }
      if (failing) std::fprintf(stderr, "slimd: postgres: listening again\n");
      failing = false;
      // Whatever was notified while no connection listened is lost: say so.
      if (connected_before) callback(StoreNotification{StoreNotification::Kind::kResync, "", 0});
      connected_before = true;
      // libpqxx may re-establish a broken connection by itself (and LISTEN again) instead of
      // throwing: a new server process behind it means the same as a reconnect.
      int backend = connection.backendpid();
      auto checked = std::chrono::steady_clock::now();
      while (!stop_listening_) {
        connection.await_notification(0, kListenPollMicros);
        if (std::chrono::steady_clock::now() - checked >= kListenCheckInterval) {
          pqxx::nontransaction check(connection);
          check.exec("SELECT 1");
          checked = std::chrono::steady_clock::now();
        }
        const int now_backend = connection.backendpid();
        if (now_backend != 0 && now_backend != backend) {
          backend = now_backend;
          callback(StoreNotification{StoreNotification::Kind::kResync, "", 0});
        }
      }
    } catch (const std::exception& e) {
      if (first != nullptr) {
        *first_status = absl::UnavailableError(Describe("listening for notifications", e.what()));
        first->Notify();
        return;
      }
      if (!failing) {
        std::fprintf(stderr, "slimd: %s; retrying every second\n",
                     Describe("listening for notifications", e.what()).c_str());
      }
      failing = true;
      for (int i = 0; i < 5 && !stop_listening_; ++i) absl::SleepFor(absl::Microseconds(kListenPollMicros));
    }
  }
}

}  // namespace slim::server
