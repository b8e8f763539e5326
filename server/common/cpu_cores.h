// How many cores this process may use: the CPUs it may be scheduled on (sched_getaffinity,
// e.g. a cpuset or `taskset`), further capped by a cgroup v2 CPU quota (`cpu.max`, e.g. a
// container's CPU limit), rounded up. std::thread::hardware_concurrency() counts the machine's
// cores, which in a container with a CPU limit is too many.
#pragma once

#include <string>

namespace slim::server {

// At least 1.
int AvailableCpuCores();

// The cores a cgroup v2 `cpu.max` line allows ("200000 100000" → 2, "150000 100000" → 2,
// "max 100000" → 0 meaning no limit); 0 for a line it cannot read.
int CoresFromCgroupCpuMax(const std::string& line);

}  // namespace slim::server
