// The read-only status page slimd serves at / on its metrics address: each device with a
// memory bar of the quotas packed on it (observed peaks marked) and the jobs on it, then the
// job list with progress. Plain HTML with inline CSS, no scripts; refreshes every 5 s.
#pragma once

#include <string>
#include <vector>

#include "slim/v1/slim.pb.h"

namespace slim::server {

std::string RenderStatusPage(const v1::ListDevicesResponse& devices, const std::vector<v1::Job>& jobs);

}  // namespace slim::server
