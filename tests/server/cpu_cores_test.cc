// The cgroup v2 cpu.max reading behind slimd's division of cores among CPU workers.
#include "server/common/cpu_cores.h"

#include <gtest/gtest.h>

#include <thread>

namespace slim::server {
namespace {

TEST(CpuCores, CgroupCpuMaxRoundsQuotasUp) {
  EXPECT_EQ(CoresFromCgroupCpuMax("200000 100000"), 2);
  EXPECT_EQ(CoresFromCgroupCpuMax("150000 100000"), 2);  // 1.5 cores: both are used
  EXPECT_EQ(CoresFromCgroupCpuMax("50000 100000"), 1);
  EXPECT_EQ(CoresFromCgroupCpuMax("max 100000"), 0);     // no limit
  EXPECT_EQ(CoresFromCgroupCpuMax(""), 0);
  EXPECT_EQ(CoresFromCgroupCpuMax("12abc 100000"), 0);
  EXPECT_EQ(CoresFromCgroupCpuMax("100000 0"), 0);
  EXPECT_EQ(CoresFromCgroupCpuMax("-5 100000"), 0);
}

TEST(CpuCores, AvailableCoresAreWithinTheMachines) {
  const int cores = AvailableCpuCores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

}  // namespace
}  // namespace slim::server
