#include "engine/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include <dlfcn.h>
#include <malloc.h>

#include <climits>
#include <stdexcept>

#include "base/errors.h"
#include "engine/memory_tracker.h"

#ifdef SLIM_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace slim {

int ConfigureRuntime(int threads) {
  mallopt(M_MMAP_MAX, 0);              // no per-allocation mmap: everything from the heap
  mallopt(M_TRIM_THRESHOLD, INT_MAX);  // never give the heap's top back
  if (threads <= 0) threads = 1;
  at::set_num_threads(threads);
  try {
    at::set_num_interop_threads(threads);
  } catch (const std::exception&) {
    // Inter-op threads can be set only once, before first use; keep what is set.
  }
  return threads;
}

namespace {

// OpenBLAS's thread-count functions, looked up at run time: libblas.so.3 is whichever BLAS
// the machine's alternatives point to, and only OpenBLAS has them.
using SetThreadsFn = void (*)(int);
using GetThreadsFn = int (*)();

SetThreadsFn OpenBlasSetThreads() {
  static const auto fn = reinterpret_cast<SetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  return fn;
}

GetThreadsFn OpenBlasGetThreads() {
  static const auto fn = reinterpret_cast<GetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return fn;
}

// 0 sequential, 1 its own pthread pool, 2 OpenMP; -1 when not OpenBLAS.
int OpenBlasParallelism() {
  static const auto fn = reinterpret_cast<GetThreadsFn>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  return fn == nullptr ? -1 : fn();
}

}  // namespace

int SetBlasThreads(int threads) {
  // Only the pthread build: OpenMP builds set the calling thread's OpenMP threads, which are
  // LibTorch's intra-op threads too (kept at 1 on purpose, see ConfigureRuntime).
  if (OpenBlasSetThreads() == nullptr || threads < 1 || OpenBlasParallelism() != 1) return BlasThreads();
  OpenBlasSetThreads()(threads);
  return BlasThreads();
}

int BlasThreads() { return OpenBlasGetThreads() == nullptr ? 0 : OpenBlasGetThreads()(); }

bool CudaAvailable() { return at::hasCUDA(); }

bool CudaBuild() {
#ifdef SLIM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

c10::Device ParseDevice(const std::string& name) {
  c10::Device device(c10::DeviceType::CPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "device: '" + name + "' is not a device (allowed: cpu, cuda, cuda:N)");
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda()) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "device: '" + name + "' is not supported (allowed: cpu, cuda, cuda:N)");
  }
  if (!CudaAvailable()) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "device: '" + name + "' requested but this build/machine has no CUDA");
  }
  if (!device.has_index()) device.set_index(0);
  const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
  if (device.index() < 0 || device.index() >= count) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "device: '" + name + "' does not exist (this machine has " + std::to_string(count) +
                          " CUDA device" + (count == 1 ? "" : "s") + ", cuda:0 to cuda:" +
                          std::to_string(count - 1) + ")");
  }
  return device;
}

#ifdef SLIM_WITH_CUDA
namespace {
// The caching allocator's reserved bytes (segments obtained from cudaMalloc, cached blocks
// included): what setMemoryFraction caps, so what calibration, the planner and reported peaks
// count on CUDA. Allocated bytes (live tensors) would look smaller and plan a chunk whose
// segments, rounded up and fragmented, exceed the cap. reserved_bytes[0] is the aggregate over
// pools (StatType::AGGREGATE); indexing by 0 avoids naming the stats types, which moved between
// LibTorch versions.
int64_t ReservedBytes(c10::DeviceIndex index, bool peak) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  return peak ? stats.reserved_bytes[0].peak : stats.reserved_bytes[0].current;
}
}  // namespace
#endif

void ResetPeakMemory(c10::Device device) {
  if (device.is_cpu()) {
    ResetCpuPeakBytes();
    return;
  }
#ifdef SLIM_WITH_CUDA
  c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

int64_t PeakMemoryBytes(c10::Device device) {
  if (device.is_cpu()) return CpuPeakBytes();
#ifdef SLIM_WITH_CUDA
  return ReservedBytes(device.index(), /*peak=*/true);
#else
  return -1;
#endif
}

int64_t CurrentMemoryBytes(c10::Device device) {
  if (device.is_cpu()) return CpuCurrentBytes();
#ifdef SLIM_WITH_CUDA
  return ReservedBytes(device.index(), /*peak=*/false);
#else
  return -1;
#endif
}

}  // namespace slim
