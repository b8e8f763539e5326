// Data-parallel groups: the ranks of one job, one process (or thread) per device, joined into a
// torch.distributed (c10d) process group — Gloo for CPU tensors, NCCL for CUDA tensors when the
// LibTorch this was built against has it (Gloo otherwise). The trainer uses it to sum gradients
// and a few scalars over the ranks; docs/engine.md ("Data parallelism") has the math.
//
// Plain C++ apart from a declaration of at::Tensor (trainer.h, which the server includes,
// includes this for DataParallelOptions); c10d stays inside data_parallel.cc.
//
// Every collective must be called by all ranks in the same order with the same shapes. A rank
// that exits, crashes or stops answering makes the collectives of the others throw
// EngineError(kInternal) — at once when its connections close, or after `timeout_seconds`.
// After a failed collective the group is unusable: destroy it and fail the run. Its
// destruction does not wait for collectives still queued behind the failed one (they may wait
// for a hung peer until the timeout each); their threads and memory are left to the process's
// exit. Not thread-safe: one thread drives a group.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace at {
class Tensor;
}  // namespace at

namespace slim {

struct DataParallelOptions {
  int rank = 0;
  int world_size = 1;  // 1: a single worker, no group
  // Where the ranks meet (a c10d store):
  //   tcp://HOST:PORT  rank 0 serves the store on PORT (it must be free); the others connect to
  //                    HOST. Ranks on one machine use HOST 127.0.0.1 and talk over loopback;
  //                    otherwise each rank talks on the interface its host name resolves to.
  //   file://PATH      a file all ranks can reach (one machine: ranks talk over loopback). It
  //                    must not exist when the group forms: use a new path for every launch.
  std::string init_method;
  // Joining and every collective fail after this long without an answer.
  double timeout_seconds = 300;
};

// Checks ranges and the init_method's form; throws EngineError(kInvalidArgument) naming the
// option ("dist-rank", "dist-world-size", "dist-init", "dist-timeout").
void ValidateDataParallelOptions(const DataParallelOptions& options);

// Whether this build can form a group for tensors on `device` ("cpu", "cuda:N").
bool DataParallelAvailable(const std::string& device);

// The c10d backends this build has: "gloo" (CPU and CUDA tensors), "nccl" (CUDA); may be empty.
std::vector<std::string> DataParallelBackends();

enum class ReduceOp { kSum, kMin, kMax };

class DataParallelGroup {
 public:
  // Joins the group: blocks until all world_size ranks have joined. `device` is where the
  // tensors passed to the collectives live: CPU → Gloo; CUDA → NCCL when built with it, else
  // Gloo. Throws EngineError(kInvalidArgument) for bad options or a build without a backend
  // for `device`, and EngineError(kInternal) when the group cannot form (a rank missing after
  // the timeout, a port in use, a stale file:// path).
  static std::unique_ptr<DataParallelGroup> Join(const DataParallelOptions& options, const std::string& device);
  virtual ~DataParallelGroup() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Sums each tensor in place over the ranks; afterwards every rank holds the same values.
  // Tensors must be dense and contiguous, on the group's device, and have the same shapes and
  // dtypes in the same order on every rank. `what` names the operation in errors.
  virtual void SumInPlace(const std::vector<at::Tensor>& tensors, const std::string& what) = 0;
  // Copies rank 0's tensors into every other rank's (same requirements as SumInPlace).
  virtual void BroadcastFromRankZero(const std::vector<at::Tensor>& tensors, const std::string& what) = 0;
  // Reduces a few numbers (in fp64: integers below 2^53 are exact).
  virtual std::vector<double> Reduce(const std::vector<double>& values, ReduceOp op, const std::string& what) = 0;
  // Returns once every rank has called it.
  void Barrier(const std::string& what) { Reduce({0.0}, ReduceOp::kSum, what); }
};

}  // namespace slim
