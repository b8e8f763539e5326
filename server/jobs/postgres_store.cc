// PostgresStore: connections and transactions, the schema and its upgrades, ids, jobs and their
// events, datasets and models (the fleet parts are in postgres_store_fleet.cc).
#include "server/jobs/postgres_store_internal.h"

#include <optional>

namespace slim::server {

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
      if (stored <= 3) tx.exec(kUpgradeFrom3);
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
    const std::optional<std::string> request_id =
        job.request_id().empty() ? std::nullopt : std::optional<std::string>(job.request_id());
    // A retry of a request this tenant made: no row is inserted (the unique index on
    // (tenant, request_id) makes concurrent retries wait for each other), the first job returned.
    const pqxx::result r = tx.exec_params(
        "INSERT INTO jobs (id, state, last_sequence, data, tenant, request_id) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT DO NOTHING",
        job.id(), static_cast<int>(job.state()), job.last_sequence(), Bytes(Serialize(job)), job.tenant(), request_id);
    if (r.affected_rows() == 0 && request_id) {
      const pqxx::result earlier = tx.exec_params("SELECT data FROM jobs WHERE tenant = $1 AND request_id = $2",
                                                  job.tenant(), *request_id);
      if (earlier.size() == 1) {
        ASSIGN_OR_RETURN(job, ParseField<v1::Job>(earlier[0][0], "job"));
        return absl::OkStatus();
      }
    }
    if (r.affected_rows() == 0) return absl::AlreadyExistsError(absl::StrCat("job ", job.id(), " already exists"));
    InsertEvent(tx, job.id(), first_event);
    if (job.state() == v1::JOB_STATE_QUEUED) {
      tx.exec_params("SELECT pg_notify($1, $2)", std::string(kControlChannel), absl::StrCat("queued:", job.id()));
    }
    return absl::OkStatus();
  }));
  return job;
}

absl::StatusOr<v1::Job> PostgresStore::JobByRequest(const std::string& tenant, const std::string& request_id) {
  v1::Job job;
  RETURN_IF_ERROR(Transact("looking up a job by request id", [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result r =
        tx.exec_params("SELECT data FROM jobs WHERE tenant = $1 AND request_id = $2", tenant, request_id);
    if (r.empty()) return absl::NotFoundError(absl::StrCat("no job with request_id '", request_id, "'"));
    ASSIGN_OR_RETURN(job, ParseField<v1::Job>(r[0][0], "job"));
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

absl::Status PostgresStore::DeleteModel(const std::string& id) {
  return Transact(absl::StrCat("deleting model ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    if (tx.exec_params("DELETE FROM models WHERE id = $1", id).affected_rows() == 0) {
      return absl::NotFoundError(absl::StrCat("model ", id, " not found"));
    }
    return absl::OkStatus();
  });
}

absl::Status PostgresStore::DeleteJob(const std::string& id) {
  return Transact(absl::StrCat("deleting job ", id), [&](pqxx::transaction_base& tx) -> absl::Status {
    const pqxx::result row = tx.exec_params("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", id);
    if (row.empty()) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
    RETURN_IF_ERROR(CheckEnded(id, static_cast<v1::JobState>(row[0][0].as<int>())));
    tx.exec_params("DELETE FROM events WHERE job_id = $1", id);
    tx.exec_params("DELETE FROM jobs WHERE id = $1", id);
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

}  // namespace slim::server
