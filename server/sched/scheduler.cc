#include "server/sched/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/byte_size.h"
#include <map>
#include <set>
#include <utility>

namespace slim::server {
namespace {

void SortByPriorityThenAge(std::vector<QueuedJob>* queued) {
  std::stable_sort(queued->begin(), queued->end(), [](const QueuedJob& a, const QueuedJob& b) {
    if (a.priority != b.priority) return a.priority > b.priority;
    return a.create_order < b.create_order;
  });
}

bool KindMatches(const QueuedJob& job, const DeviceCapacity& device) {
  return job.device_kind.empty() || job.device_kind == device.kind;
}

// The shrinks that free `needed` bytes on `device` for a job of `priority`, or nothing if the
// lower-priority jobs there cannot give that much.
std::vector<ShrinkOrder> PlanShrinks(const std::string& device, int priority, int64_t needed,
                                     const std::vector<RunningJob>& running, const std::string& for_job) {
  std::vector<const RunningJob*> candidates;
  for (const RunningJob& r : running) {
    if (r.device == device && r.priority < priority && r.min_quota_bytes > 0 && r.quota_bytes > r.min_quota_bytes) {
      candidates.push_back(&r);
    }
  }
  // Lowest priority first; among equals the newest first (it has done the least work).
  std::sort(candidates.begin(), candidates.end(), [](const RunningJob* a, const RunningJob* b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    return a->create_order > b->create_order;
  });
  std::vector<ShrinkOrder> orders;
  for (const RunningJob* r : candidates) {
    if (needed <= 0) break;
    const int64_t give = std::min(needed, r->quota_bytes - r->min_quota_bytes);
    orders.push_back({r->id, r->quota_bytes - give, for_job});
    needed -= give;
  }
  if (needed > 0) return {};
  return orders;
}

// Grow-back (see scheduler.h): shrunk jobs on devices nobody is waiting for get their
// requested quotas back where the room is there.
void PlanGrows(const std::vector<DeviceCapacity>& devices, const std::vector<RunningJob>& running,
               const std::vector<const QueuedJob*>& still_queued, const std::set<std::string>& reserved,
               std::map<std::string, int64_t>* free, ScheduleDecision* decision) {
  std::set<std::string> touched = reserved;  // devices with a placement, shrink or change in flight
  for (const Placement& p : decision->placements) touched.insert(p.devices.begin(), p.devices.end());
  for (const RunningJob& r : running) {
    if (r.quota_change_pending) touched.insert(r.device);
  }
  std::vector<const RunningJob*> shrunk;
  for (const RunningJob& r : running) {
    if (r.requested_quota_bytes > r.quota_bytes && !r.quota_change_pending) shrunk.push_back(&r);
  }
  std::sort(shrunk.begin(), shrunk.end(), [](const RunningJob* a, const RunningJob* b) {
    if (a->priority != b->priority) return a->priority > b->priority;
    return a->create_order < b->create_order;
  });
  for (const RunningJob* r : shrunk) {
    const auto device = std::find_if(devices.begin(), devices.end(),
                                     [&](const DeviceCapacity& d) { return d.name == r->device; });
    if (device == devices.end() || touched.count(r->device)) continue;
    const bool wanted = std::any_of(still_queued.begin(), still_queued.end(), [&](const QueuedJob* q) {
      return KindMatches(*q, *device) && device->capacity_bytes >= ProcessCost(*device, q->quota_bytes);
    });
    const int64_t more = r->requested_quota_bytes - r->quota_bytes;
    if (wanted || (*free)[r->device] < more) continue;
    (*free)[r->device] -= more;
    decision->grows.push_back({r->id, r->requested_quota_bytes});
  }
}

}  // namespace

ScheduleDecision Schedule(const std::vector<DeviceCapacity>& devices, const std::vector<RunningJob>& running,
                          std::vector<QueuedJob> queued) {
  std::map<std::string, int64_t> free;
  std::map<std::string, int64_t> footprint;
  for (const DeviceCapacity& d : devices) free[d.name] = d.capacity_bytes, footprint[d.name] = d.worker_footprint_bytes;
  for (const RunningJob& r : running) free[r.device] -= r.quota_bytes + footprint[r.device];
  std::set<std::string> reserved;  // devices being shrunk for a job in this pass
  std::set<std::string> shrinking;  // running jobs already ordered to shrink
  std::vector<const QueuedJob*> still_queued;  // not placed and not made room for

  SortByPriorityThenAge(&queued);
  ScheduleDecision decision;
  for (const QueuedJob& job : queued) {
    if (job.workers > 1) {
      // A gang: `workers` devices with room each, the tightest first, or none at all.
      std::vector<const DeviceCapacity*> fitting;
      for (const DeviceCapacity& d : devices) {
        if (KindMatches(job, d) && !reserved.count(d.name) && free[d.name] >= ProcessCost(d, job.quota_bytes)) {
          fitting.push_back(&d);
        }
      }
      if (static_cast<int>(fitting.size()) < job.workers) {  // stays queued; others may backfill
        still_queued.push_back(&job);
        continue;
      }
      std::stable_sort(fitting.begin(), fitting.end(), [&](const DeviceCapacity* a, const DeviceCapacity* b) {
        return free[a->name] < free[b->name];
      });
      Placement placement{job.id, fitting[0]->name, {}};
      for (int rank = 0; rank < job.workers; ++rank) {
        placement.devices.push_back(fitting[rank]->name);
        free[fitting[rank]->name] -= ProcessCost(*fitting[rank], job.quota_bytes);
      }
      decision.placements.push_back(std::move(placement));
      continue;
    }
    const DeviceCapacity* best = nullptr;
    for (const DeviceCapacity& d : devices) {
      if (!KindMatches(job, d) || reserved.count(d.name) || free[d.name] < ProcessCost(d, job.quota_bytes)) continue;
      if (best == nullptr || free[d.name] < free[best->name]) best = &d;
    }
    if (best != nullptr) {
      decision.placements.push_back({job.id, best->name, {best->name}});
      free[best->name] -= ProcessCost(*best, job.quota_bytes);
      continue;
    }
    // Shrink-to-fit: the device that needs the fewest shrinks to make room.
    std::vector<ShrinkOrder> chosen;
    std::string chosen_device;
    for (const DeviceCapacity& d : devices) {
      if (!KindMatches(job, d) || reserved.count(d.name) || d.capacity_bytes < ProcessCost(d, job.quota_bytes)) continue;
      std::vector<RunningJob> available;
      for (const RunningJob& r : running) {
        if (!shrinking.count(r.id) && !r.quota_change_pending) available.push_back(r);
      }
      std::vector<ShrinkOrder> orders =
          PlanShrinks(d.name, job.priority, ProcessCost(d, job.quota_bytes) - free[d.name], available, job.id);
      if (!orders.empty() && (chosen.empty() || orders.size() < chosen.size())) {
        chosen = std::move(orders);
        chosen_device = d.name;
      }
    }
    if (chosen.empty()) {  // stays queued; later jobs may backfill other devices
      still_queued.push_back(&job);
      continue;
    }
    reserved.insert(chosen_device);
    for (const ShrinkOrder& s : chosen) {
      shrinking.insert(s.job_id);
      decision.shrinks.push_back(s);
    }
  }
  PlanGrows(devices, running, still_queued, reserved, &free, &decision);
  return decision;
}

std::string WhyNeverPlaceable(const std::vector<DeviceCapacity>& devices, const QueuedJob& job) {
  int fitting = 0;
  int64_t footprint = 0;  // the largest of the devices of its kind, for the message
  for (const DeviceCapacity& d : devices) {
    if (KindMatches(job, d) && d.capacity_bytes >= ProcessCost(d, job.quota_bytes)) ++fitting;
    if (KindMatches(job, d)) footprint = std::max(footprint, d.worker_footprint_bytes);
  }
  const int needed = std::max(1, job.workers);
  if (fitting >= needed) return "";
  const std::string kind = job.device_kind.empty() ? "" : job.device_kind + " ";
  return absl::StrCat("needs ", needed, " ", kind, needed == 1 ? "device" : "devices", " with ",
                      FormatBytes(job.quota_bytes), needed == 1 ? "" : " each",
                      footprint > 0 ? absl::StrCat(" plus the worker footprint (", FormatBytes(footprint), ")") : "",
                      "; there ", fitting == 1 ? "is " : "are ", fitting);
}

std::vector<std::pair<std::string, int>> QueuePositions(std::vector<QueuedJob> queued) {
  SortByPriorityThenAge(&queued);
  std::vector<std::pair<std::string, int>> out;
  for (size_t i = 0; i < queued.size(); ++i) out.emplace_back(queued[i].id, static_cast<int>(i + 1));
  return out;
}

}  // namespace slim::server
