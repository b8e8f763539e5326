// The read-only status page slimd serves at / on its metrics address: a legend, each device with
// a memory bar of the quotas packed on it (observed peaks marked; a second bar zooming 4x or
// more on the committed part when it is that small), then the job list with progress,
// each FAILED job's error, and (in a fleet) each job's replica. In a fleet the devices of every
// live replica are drawn, one section per replica, so that one page shows the whole fleet. A
// job has one colour, derived from its id, in the bars and in the list. Plain HTML with inline
// CSS, no scripts, every string escaped; refreshes every 5 s. No tenant data: it is served
// without a token.
#pragma once

#include <string>
#include <vector>

#include "slim/v1/slim.pb.h"

namespace slim::server {

// `devices`: this slimd's (ListDevices); `fleet`: in a fleet, every live replica's devices as
// they published them (JobManager::FleetDevices; this replica's own are drawn from `devices`,
// which is fresher), empty for a single slimd; `jobs`: those to list (every replica's in a
// fleet); `replica`: this slimd's replica id in a fleet, "" for a single slimd.
std::string RenderStatusPage(const v1::ListDevicesResponse& devices,
                             const std::vector<v1::ListDevicesResponse>& fleet, const std::vector<v1::Job>& jobs,
                             const std::string& replica);

}  // namespace slim::server
