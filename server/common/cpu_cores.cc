#include "server/common/cpu_cores.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

namespace slim::server {

int CoresFromCgroupCpuMax(const std::string& line) {
  std::istringstream in(line);
  std::string quota;
  long long period = 0;
  if (!(in >> quota >> period) || period <= 0 || quota == "max") return 0;
  try {
    size_t used = 0;
    const long long q = std::stoll(quota, &used);
    if (used != quota.size() || q <= 0) return 0;
    return static_cast<int>(std::min<long long>((q + period - 1) / period, 1 << 20));
  } catch (const std::exception&) {
    return 0;
  }
}

int AvailableCpuCores() {
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cores = CPU_COUNT(&set);
  // The process's cgroup (v2: the line "0::/path") and its ancestors: the tightest cpu.max.
  std::ifstream cgroup("/proc/self/cgroup");
  std::string entry;
  while (std::getline(cgroup, entry)) {
    if (entry.rfind("0::", 0) != 0) continue;
    for (std::string path = entry.substr(3);; path = path.substr(0, path.rfind('/'))) {
      std::ifstream cpu_max("/sys/fs/cgroup" + path + "/cpu.max");
      std::string line;
      if (std::getline(cpu_max, line)) {
        const int limit = CoresFromCgroupCpuMax(line);
        if (limit > 0) cores = std::min(cores, limit);
      }
      if (path.empty() || path == "/") break;
    }
  }
  return std::max(1, cores);
}

}  // namespace slim::server
