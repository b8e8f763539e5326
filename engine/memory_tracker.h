// Process-wide accounting of CPU tensor memory, and an optional cap.
//
// InstallCpuMemoryTracker() replaces LibTorch's CPU allocator (through c10::SetCPUAllocator)
// with one that counts the bytes of live tensor allocations. Tensors allocated before the
// install are not counted. Above the cap, allocation throws c10::OutOfMemoryError, which the
// engine reports as RESOURCE_EXHAUSTED: a per-process bound on tensor memory.
// Memory that libraries allocate outside c10 (BLAS workspaces) is not counted.
// All functions are thread-safe.
#pragma once

#include <cstdint>

namespace slim {

// Idempotent. Call before creating the tensors that should be counted.
void InstallCpuMemoryTracker();
bool CpuMemoryTrackerInstalled();

int64_t CpuCurrentBytes();
int64_t CpuPeakBytes();
// Sets the peak to the current value.
void ResetCpuPeakBytes();
// Allocations that would take the current total above `bytes` fail; 0 removes the cap.
void SetCpuMemoryCap(int64_t bytes);
int64_t CpuMemoryCap();

}  // namespace slim
