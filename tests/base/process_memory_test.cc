// ResidentBytes and NvmlProcessBytes (base/process_memory.h) where there is no GPU.
#include "base/process_memory.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace slim {
namespace {

TEST(ProcessMemory, ResidentBytesFollowsWhatAProcessTouches) {
  const int64_t before = ResidentBytes(::getpid());
  ASSERT_GT(before, 0);
  std::vector<char> touched(64 << 20, 1);  // 64 MiB, written so it is resident
  const int64_t after = ResidentBytes(::getpid());
  EXPECT_GE(after - before, 60 << 20) << before << " -> " << after;
  EXPECT_EQ(touched[touched.size() - 1], 1);
}

TEST(ProcessMemory, GoneProcessesAreUnknown) {
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_EQ(ResidentBytes(child), -1);
  EXPECT_EQ(ResidentBytes(-5), -1);
}

TEST(ProcessMemory, NvmlIsUnknownWithoutTheDriverOrTheDevice) {
  // No NVIDIA driver here (or, where there is one, no GPU at this bus id): unknown, not 0.
  EXPECT_EQ(NvmlProcessBytes("0000:ff:1f.7", ::getpid()), -1);
}

}  // namespace
}  // namespace slim
