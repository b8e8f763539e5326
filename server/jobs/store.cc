#include "server/jobs/store.h"

namespace slim::server {
namespace {

absl::Status NoReplicas() {
  return absl::UnimplementedError(
      "this store coordinates no replicas: fleets need the PostgreSQL store opened with a replica id "
      "(slimd --database-url)");
}

}  // namespace

absl::StatusOr<JobClaim> Store::ClaimJob(const std::string&, absl::Duration) { return NoReplicas(); }
absl::StatusOr<std::vector<JobLease>> Store::RenewLeases(absl::Duration) { return NoReplicas(); }
absl::Status Store::ReleaseJob(const std::string&) { return NoReplicas(); }
absl::StatusOr<std::vector<JobClaim>> Store::TakeOverExpiredJobs(absl::Duration) { return NoReplicas(); }
absl::StatusOr<std::string> Store::RequestCancel(const std::string&) { return NoReplicas(); }
absl::Status Store::Listen(std::function<void(const StoreNotification&)>) { return absl::OkStatus(); }
absl::Status Store::PublishDevices(const v1::ListDevicesResponse&) { return NoReplicas(); }
absl::StatusOr<std::vector<v1::ListDevicesResponse>> Store::FleetDevices(absl::Duration) { return NoReplicas(); }

}  // namespace slim::server
