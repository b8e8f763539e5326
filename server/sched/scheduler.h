// Placement of fine-tuning jobs on devices under memory quotas (docs/service.md, docs/memory-planner.md). Pure logic:
// the caller passes a snapshot of devices, running jobs and queued jobs and applies the
// decision. No I/O, no clocks, no locks: deterministic and tested directly.
//
// Policy:
//   - Queued jobs are considered by priority (higher first), then in creation order (FIFO).
//   - Every process on a device costs its quota plus the device's worker footprint (what a
//     worker process uses beyond its tensors, measured once per device: LibTorch's resident
//     memory on CPU, the CUDA context and workspaces on a GPU). "Committed" below means the sum
//     of those costs; it never exceeds the capacity.
//   - A job fits a device of its kind (any kind if it names none) whose uncommitted memory —
//     capacity minus what the processes placed on it commit — covers its quota plus the
//     footprint. Among those it goes to the best fit: the device left with the least
//     uncommitted memory. Many jobs share a device.
//   - Shrink-to-fit: a job that fits nowhere may make room on one device by lowering the quotas
//     of running jobs of strictly lower priority there, down to their minimum quotas (the
//     planner's smallest feasible quota for them). Lowest priority first, newest first among
//     equals; the device needing the fewest shrinks wins. The job itself is placed on a later
//     pass, once the shrunk jobs confirm their smaller quotas; until then that device takes no
//     other placements in this pass.
//   - Jobs that fit nowhere even with shrinking stay queued; later jobs may still be placed on
//     other devices (backfill), so one large job does not block small ones forever.
//   - Grow-back: a shrunk job gets its requested quota back once its device has room for it
//     again and no queued job could use that room — the device has no quota change in flight,
//     takes no placement or shrink in this pass, and no job still queued after this pass fits
//     the device (by kind and capacity). Higher priority first, then the oldest. Growth is to
//     the full requested quota only, so a job's quota moves at most twice per shrink.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace slim::server {

struct DeviceCapacity {
  std::string name;  // "cpu:0", "cuda:0"
  std::string kind;  // "cpu", "cuda"
  int64_t capacity_bytes = 0;
  int64_t worker_footprint_bytes = 0;  // committed per process on it, beside the process's quota
  std::string pci_bus_id{};  // GPUs: how NVML finds it, to read what each worker process uses there
};

// What a process with `quota_bytes` commits on `device`.
inline int64_t ProcessCost(const DeviceCapacity& device, int64_t quota_bytes) {
  return quota_bytes + device.worker_footprint_bytes;
}

// One per device a running job uses (a data-parallel job has one entry per rank), and one per
// reservation (calibrations, generations: processes too, with their own footprint).
struct RunningJob {
  std::string id;
  std::string device;
  int priority = 0;
  int64_t quota_bytes = 0;      // committed now
  int64_t min_quota_bytes = 0;  // smallest quota it can be shrunk to (0: not shrinkable)
  int64_t create_order = 0;
  int64_t requested_quota_bytes = 0;  // the quota it was admitted with (0: quota_bytes)
  bool quota_change_pending = false;  // a shrink or grow is in flight: not shrunk or grown again
};

struct QueuedJob {
  std::string id;
  std::string device_kind;  // "" = any
  int priority = 0;
  int64_t quota_bytes = 0;
  int64_t create_order = 0;  // smaller = older
  int workers = 1;           // data-parallel ranks, one device each; the quota is per worker
};

struct Placement {
  std::string job_id;
  std::string device;                // rank 0's
  std::vector<std::string> devices;  // every rank's, in rank order (devices[0] == device)
};

struct ShrinkOrder {
  std::string job_id;
  int64_t quota_bytes = 0;    // the new, smaller quota
  std::string for_job_id;     // the job it makes room for
};

struct GrowOrder {
  std::string job_id;
  int64_t quota_bytes = 0;  // the new, larger quota: the job's requested one
};

struct ScheduleDecision {
  std::vector<Placement> placements;
  std::vector<ShrinkOrder> shrinks;
  std::vector<GrowOrder> grows;
};

ScheduleDecision Schedule(const std::vector<DeviceCapacity>& devices, const std::vector<RunningJob>& running,
                          std::vector<QueuedJob> queued);

// Why `job` could not be placed even on these devices empty (its quota is larger than every
// device of its kind, or it needs more devices of its kind than there are), e.g. "needs 2 cpu
// devices with 8.0 MiB each; there are 1"; "" when it could.
std::string WhyNeverPlaceable(const std::vector<DeviceCapacity>& devices, const QueuedJob& job);

// 1-based positions of the queued jobs in the order Schedule considers them.
std::vector<std::pair<std::string, int>> QueuePositions(std::vector<QueuedJob> queued);

}  // namespace slim::server
