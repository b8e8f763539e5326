// Process-level runtime settings and device memory statistics shared by tools and tests.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace slim {

// Sets LibTorch's intra-op threads (and, once per process, inter-op threads) to `threads`, or
// to the machine's hardware concurrency when `threads` <= 0. LibTorch defaults to 1 thread in
// a C++ program on Debian's build, so every binary calls this at start. Returns the count set.
int ConfigureThreads(int threads = 0);

// Parses "cpu", "cuda", "cuda:N". Throws EngineError(kInvalidArgument) for anything else or
// for a CUDA device this process cannot use.
c10::Device ParseDevice(const std::string& name);
bool CudaAvailable();

// Peak and current bytes of tensor memory on `device`: the counting CPU allocator (which must
// be installed, see memory_tracker.h) or the CUDA caching allocator's allocated bytes.
void ResetPeakMemory(c10::Device device);
int64_t PeakMemoryBytes(c10::Device device);
int64_t CurrentMemoryBytes(c10::Device device);

}  // namespace slim
