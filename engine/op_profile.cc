#include "engine/op_profile.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <set>

#include "base/errors.h"

namespace slim {
namespace {

// Operators that only make views, change metadata or allocate: no kernel on CUDA.
const std::set<std::string>& NoKernelOps() {
  static const std::set<std::string> ops{
      "aten::view", "aten::_reshape_alias", "aten::reshape", "aten::as_strided", "aten::transpose",
      "aten::t", "aten::permute", "aten::narrow", "aten::select", "aten::slice", "aten::expand",
      "aten::unsqueeze", "aten::squeeze", "aten::detach", "aten::alias", "aten::empty",
      "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::unfold", "aten::split",
      "aten::chunk", "aten::unbind", "aten::lift_fresh", "aten::_unsafe_view", "aten::view_as",
      "aten::expand_as", "aten::diagonal", "aten::flatten", "aten::set_", "aten::result_type",
      "aten::is_nonzero", "aten::size", "aten::stride", "aten::numel", "aten::dim",
      // no-ops when they reach a leaf (a real conversion or copy dispatches copy_ underneath)
      "aten::resolve_conj", "aten::resolve_neg", "aten::to", "aten::contiguous", "detach",
  };
  return ops;
}

struct Frame {
  std::chrono::steady_clock::time_point start;
  const char* name = "";
  bool has_child = false;
};

thread_local std::vector<Frame> frames;

}  // namespace

struct OpProfiler::State {
  std::mutex mu;
  std::map<std::string, OpCount> ops;
  int64_t leaf_ops = 0;
  at::CallbackHandle handle = 0;
};

namespace {
OpProfiler::State* active = nullptr;  // the one profiler the callbacks feed
std::mutex active_mu;
}  // namespace

OpProfiler::OpProfiler() : state_(std::make_unique<State>()) {
  std::lock_guard<std::mutex> lock(active_mu);
  CheckArgument(active == nullptr, "op profile: another profiler is running in this process");
  active = state_.get();
  auto start = [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
    if (!frames.empty()) frames.back().has_child = true;
    frames.push_back({std::chrono::steady_clock::now(), fn.name(), false});
    return nullptr;
  };
  auto end = [](const at::RecordFunction& fn, at::ObserverContext*) {
    if (frames.empty()) return;  // started before the profiler
    const Frame f = frames.back();
    frames.pop_back();
    if (f.has_child) return;
    const char* caller = frames.empty() ? "" : frames.back().name;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - f.start).count();
    std::lock_guard<std::mutex> lock(active_mu);
    if (active == nullptr) return;
    std::lock_guard<std::mutex> state_lock(active->mu);
    ++active->leaf_ops;
    OpCount& c = active->ops[fn.name()];
    if (c.name.empty()) c.name = fn.name();
    ++c.count;
    ++c.callers[caller];
    c.host_seconds += seconds;
  };
  state_->handle = at::addGlobalCallback(
      at::RecordFunctionCallback(start, end).scopes({at::RecordScope::FUNCTION}));
}

OpProfiler::~OpProfiler() {
  at::removeCallback(state_->handle);
  std::lock_guard<std::mutex> lock(active_mu);
  active = nullptr;
}

OpProfile OpProfiler::Snapshot() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  OpProfile p;
  p.leaf_ops = state_->leaf_ops;
  for (const auto& [name, c] : state_->ops) {
    if (NoKernelOps().count(name) != 0) continue;
    p.kernel_ops += c.count;
    p.kernel_host_seconds += c.host_seconds;
    p.ops.push_back(c);
  }
  for (OpCount& c : p.ops) {
    std::vector<std::pair<std::string, int64_t>> callers(c.callers.begin(), c.callers.end());
    std::sort(callers.begin(), callers.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    c.top_callers.assign(callers.begin(), callers.begin() + std::min<size_t>(3, callers.size()));
  }
  std::sort(p.ops.begin(), p.ops.end(), [](const OpCount& a, const OpCount& b) {
    return a.count != b.count ? a.count > b.count : a.name < b.name;
  });
  return p;
}

}  // namespace slim
