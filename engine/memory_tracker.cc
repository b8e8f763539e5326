#include "engine/memory_tracker.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

// LibTorch 2.3 made Allocator::allocate non-const and added the pure virtual copy_data.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define SLIM_ALLOCATE_CONST
#define SLIM_HAS_COPY_DATA 1
#else
#define SLIM_ALLOCATE_CONST const
#endif

namespace slim {
namespace {

// Each block is [64-byte header holding the size][payload]; the payload pointer is both the
// DataPtr's data and its context (LibTorch's raw_allocate requires data == context).
constexpr size_t kHeader = 64;

std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_cap{0};
std::atomic<bool> g_installed{false};

void RaisePeak(int64_t value) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (value > peak && !g_peak.compare_exchange_weak(peak, value, std::memory_order_relaxed)) {
  }
}

void Release(void* payload) {
  if (payload == nullptr) return;
  char* block = static_cast<char*>(payload) - kHeader;
  size_t n;
  std::memcpy(&n, block, sizeof(n));
  g_current.fetch_sub(static_cast<int64_t>(n), std::memory_order_relaxed);
  std::free(block);
}

class CountingCpuAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) SLIM_ALLOCATE_CONST override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &Release, cpu};
    const int64_t size = static_cast<int64_t>(n);
    const int64_t now = g_current.fetch_add(size, std::memory_order_relaxed) + size;
    const int64_t cap = g_cap.load(std::memory_order_relaxed);
    if (cap > 0 && now > cap) {
      g_current.fetch_sub(size, std::memory_order_relaxed);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "CPU memory cap exceeded: allocating ", n,
                       " bytes with ", now - size, " bytes in use would exceed the cap of ",
                       cap, " bytes");
    }
    void* block = nullptr;
    if (posix_memalign(&block, kHeader, n + kHeader) != 0) {
      g_current.fetch_sub(size, std::memory_order_relaxed);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "posix_memalign failed for ", n, " bytes");
    }
    std::memcpy(block, &n, sizeof(n));
    RaisePeak(now);
    void* payload = static_cast<char*>(block) + kHeader;
    return {payload, payload, &Release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Release; }

#ifdef SLIM_HAS_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (count > 0) std::memcpy(dest, src, count);
  }
#endif
};

}  // namespace

void InstallCpuMemoryTracker() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Leaked on purpose: tensors freed during static destruction still call Release.
    static CountingCpuAllocator* allocator = new CountingCpuAllocator();
    c10::SetCPUAllocator(allocator, /*priority=*/100);
    g_installed.store(true);
  });
}

bool CpuMemoryTrackerInstalled() { return g_installed.load(); }
int64_t CpuCurrentBytes() { return g_current.load(std::memory_order_relaxed); }
int64_t CpuPeakBytes() { return g_peak.load(std::memory_order_relaxed); }
void ResetCpuPeakBytes() { g_peak.store(g_current.load(std::memory_order_relaxed)); }
void SetCpuMemoryCap(int64_t bytes) { g_cap.store(bytes < 0 ? 0 : bytes); }
int64_t CpuMemoryCap() { return g_cap.load(); }

}  // namespace slim
