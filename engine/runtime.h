// Process-level runtime settings and device memory statistics shared by tools and tests.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace slim {

// Process setup every slim binary calls at start. Sets LibTorch's intra-op threads to
// `threads`, or to 1 when `threads` <= 0, and keeps freed heap memory in the process.
//
// Why 1 by default: matmuls (the bulk of a step) run on OpenBLAS's own pthread pool, which
// uses every core. LibTorch's OpenMP pool and OpenBLAS's pool both spin-wait for work; sized
// to all cores together they steal each other's cores between every op (perf on 2 cores: half
// the cycles spinning; a SLiM C = 512 step 3.4x slower). Pass the core count explicitly for
// elementwise-heavy work without BLAS.
// Why the heap setting: tensors of a few MiB are otherwise mmap'ed fresh per allocation and
// unmapped on free, so every activation pays page faults and kernel zeroing (~2.5 ns per element
// at L = 8192); a training process allocates the same shapes each step, so the heap settles.
// Returns the intra-op thread count set.
int ConfigureRuntime(int threads = 0);

// The BLAS library's own thread pool (OpenBLAS, which LibTorch uses for CPU matmuls through
// libblas.so.3). When several CPU workers share a machine, each pool sized to every core makes
// them spin against each other; slimd gives each worker its share of the cores
// (docs/service.md, "CPU threads"). SetBlasThreads(n) asks for n >= 1 threads and returns the
// count in effect; both return 0 when the BLAS is not OpenBLAS (nothing to set). Only
// OpenBLAS's pthread build is changed: its OpenMP build would also change LibTorch's OpenMP
// threads, so there SetBlasThreads leaves the count alone and returns it. Call it only
// between BLAS calls of this process (at a step boundary), never during one.
int SetBlasThreads(int threads);
int BlasThreads();

// Parses "cpu", "cuda", "cuda:N". Throws EngineError(kInvalidArgument) for anything else or
// for a CUDA device this process cannot use (no CUDA, or N beyond the devices it sees).
c10::Device ParseDevice(const std::string& name);
bool CudaAvailable();
// Whether this binary was compiled against a CUDA LibTorch (SLIM_WITH_CUDA): its CUDA memory
// caps, statistics and footprints exist only then.
bool CudaBuild();

// Peak and current bytes of tensor memory on `device`: the counting CPU allocator (which must
// be installed, see memory_tracker.h) or the CUDA caching allocator's reserved bytes (what its
// memory-fraction cap counts; see runtime.cc).
void ResetPeakMemory(c10::Device device);
int64_t PeakMemoryBytes(c10::Device device);
int64_t CurrentMemoryBytes(c10::Device device);

}  // namespace slim
