// Counts the ATen operators a region of code dispatches, to see where a step's time goes on a
// GPU without a GPU profiler: on CUDA each leaf operator (one that calls no other operator) is
// roughly one kernel launch, and the host's launch cost bounds small slices (docs/engine.md,
// "Kernel launches"). Used by slim-bench --profile.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace slim {

struct OpCount {
  std::string name;         // "aten::bmm"
  int64_t count = 0;
  double host_seconds = 0;  // from entry to return, on the calling thread
  std::map<std::string, int64_t> callers;  // the operator that called it ("" at top level): count
  std::vector<std::pair<std::string, int64_t>> top_callers;  // the three most frequent
};

struct OpProfile {
  int64_t leaf_ops = 0;    // operators that dispatched no other operator
  int64_t kernel_ops = 0;  // leaf operators that are not views, reshapes or allocations
  double kernel_host_seconds = 0;
  std::vector<OpCount> ops;  // kernel operators by name, the most frequent first
};

// While alive, counts every ATen operator any thread dispatches (a global RecordFunction
// callback). One at a time per process.
class OpProfiler {
 public:
  OpProfiler();
  ~OpProfiler();
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  // What was counted so far.
  OpProfile Snapshot() const;

  struct State;  // the counts (op_profile.cc), fed by the global callbacks

 private:
  std::unique_ptr<State> state_;
};

}  // namespace slim
