// PostgresStore for fleets: claims, leases, fencing, published devices, cancel requests across
// replicas, and the LISTEN/NOTIFY loop.
#include "server/jobs/postgres_store_internal.h"

namespace slim::server {

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
