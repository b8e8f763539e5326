#include "engine/data_parallel.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "base/errors.h"
#include "engine/runtime.h"

// USE_C10D_GLOO / USE_C10D_NCCL open the c10d backend headers; CMake defines them (with
// SLIM_WITH_GLOO / SLIM_WITH_NCCL) only when the backend's headers were found.
#if defined(SLIM_WITH_GLOO) || defined(SLIM_WITH_NCCL)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#endif
#ifdef SLIM_WITH_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef SLIM_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace slim {
namespace {

constexpr char kTcp[] = "tcp://";
constexpr char kFile[] = "file://";

bool StartsWith(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

struct TcpAddress {
  std::string host;
  int port = 0;
};

// "tcp://HOST:PORT" (HOST may be [v6]); throws naming --dist-init.
TcpAddress ParseTcp(const std::string& init) {
  const std::string rest = init.substr(std::string(kTcp).size());
  const size_t colon = rest.rfind(':');
  TcpAddress a;
  if (colon != std::string::npos) {
    a.host = rest.substr(0, colon);
    if (a.host.size() >= 2 && a.host.front() == '[' && a.host.back() == ']') {
      a.host = a.host.substr(1, a.host.size() - 2);
    }
    const std::string port = rest.substr(colon + 1);
    char* end = nullptr;
    const long p = port.empty() ? 0 : std::strtol(port.c_str(), &end, 10);
    if (!port.empty() && *end == '\0') a.port = static_cast<int>(p);
  }
  if (a.host.empty() || a.port < 1 || a.port > 65535) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "dist-init: '" + init + "' is not tcp://HOST:PORT with a port in 1..65535");
  }
  return a;
}

[[maybe_unused]] bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || StartsWith(host, "127.");
}

[[maybe_unused]] std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g s", s);
  return buf;
}

// The message of a c10d/Gloo/NCCL failure without LibTorch's C++ backtrace.
[[maybe_unused]] std::string Message(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string m = c10 != nullptr ? c10->what_without_backtrace() : e.what();
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  return m;
}

#if defined(SLIM_WITH_GLOO) || defined(SLIM_WITH_NCCL)

c10d::ReduceOp ToC10d(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return c10d::ReduceOp::SUM;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
  }
  return c10d::ReduceOp::SUM;
}

// A group over one c10d backend (ProcessGroupGloo or ProcessGroupNCCL). Called through the
// concrete class, whose collective methods have the same signatures in LibTorch 1.13 (where it
// derives from ProcessGroup) and 2.x (where it derives from Backend).
template <typename Backend>
class C10dGroup final : public DataParallelGroup {
 public:
  C10dGroup(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<Backend> backend, DataParallelOptions options,
            c10::Device device)
      : store_(std::move(store)), backend_(std::move(backend)), options_(std::move(options)), device_(device) {}

  ~C10dGroup() override {
    if (broken_) {
      // Collectives still queued may wait for a dead or hung peer until the timeout, one after
      // the other, and the backend's destructor would wait for all of them. A failed group's
      // backend and store are therefore left to the process's exit (a failed worker exits).
      (void)backend_.release();
      (void)store_.release();
    }
  }

  int rank() const override { return options_.rank; }
  int world_size() const override { return options_.world_size; }

  void SumInPlace(const std::vector<at::Tensor>& tensors, const std::string& what) override {
    Guard(what, [&] {
      // One collective per tensor, all in flight at once: no flattened copy of the gradients
      // (which would cost a second gradient's worth of memory under a tight quota).
      std::vector<decltype(backend_->allreduce(std::declval<std::vector<at::Tensor>&>()))> works;
      for (const at::Tensor& t : tensors) {
        std::vector<at::Tensor> one{t};
        works.push_back(backend_->allreduce(one));
      }
      for (auto& w : works) w->wait();
    });
  }

  void BroadcastFromRankZero(const std::vector<at::Tensor>& tensors, const std::string& what) override {
    Guard(what, [&] {
      std::vector<decltype(backend_->broadcast(std::declval<std::vector<at::Tensor>&>()))> works;
      for (const at::Tensor& t : tensors) {
        std::vector<at::Tensor> one{t};
        c10d::BroadcastOptions o;
        o.rootRank = 0;
        works.push_back(backend_->broadcast(one, o));
      }
      for (auto& w : works) w->wait();
    });
  }

  std::vector<double> Reduce(const std::vector<double>& values, ReduceOp op, const std::string& what) override {
    std::vector<double> out;
    Guard(what, [&] {
      std::vector<at::Tensor> one{at::tensor(values, at::kDouble).to(device_)};
      c10d::AllreduceOptions o;
      o.reduceOp = ToC10d(op);
      backend_->allreduce(one, o)->wait();
      const at::Tensor host = one[0].cpu().contiguous();
      out.assign(host.data_ptr<double>(), host.data_ptr<double>() + host.numel());
    });
    return out;
  }

 private:
  template <typename F>
  void Guard(const std::string& what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      broken_ = true;
      throw EngineError(ErrorCode::kInternal,
                        "data-parallel " + what + " failed on rank " + std::to_string(options_.rank) + " of " +
                            std::to_string(options_.world_size) +
                            ": another rank exited, failed or did not answer within " +
                            Seconds(options_.timeout_seconds) + " (" + Message(e) + ")");
    }
  }

  c10::intrusive_ptr<c10d::Store> store_;  // outlives the backend, which rendezvoused through it
  c10::intrusive_ptr<Backend> backend_;
  DataParallelOptions options_;
  c10::Device device_;
  bool broken_ = false;  // a collective failed: the group cannot be used again
};

#endif  // SLIM_WITH_GLOO || SLIM_WITH_NCCL

}  // namespace

void ValidateDataParallelOptions(const DataParallelOptions& o) {
  CheckArgument(o.world_size >= 1 && o.world_size <= 4096,
                "dist-world-size: must be in 1..4096, got " + std::to_string(o.world_size));
  CheckArgument(o.rank >= 0 && o.rank < o.world_size,
                "dist-rank: must be in 0.." + std::to_string(o.world_size - 1) + ", got " + std::to_string(o.rank));
  CheckArgument(std::isfinite(o.timeout_seconds) && o.timeout_seconds > 0,
                "dist-timeout: must be > 0 seconds");
  if (o.world_size == 1 && o.init_method.empty()) return;
  if (StartsWith(o.init_method, kTcp)) {
    ParseTcp(o.init_method);
  } else if (StartsWith(o.init_method, kFile)) {
    CheckArgument(o.init_method.size() > std::string(kFile).size(), "dist-init: file:// needs a path");
  } else {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "dist-init: '" + o.init_method + "' must be tcp://HOST:PORT or file://PATH");
  }
}

bool DataParallelAvailable(const std::string& device) {
#ifdef SLIM_WITH_GLOO
  (void)device;
  return true;
#elif defined(SLIM_WITH_NCCL)
  return StartsWith(device, "cuda");
#else
  (void)device;
  return false;
#endif
}

std::vector<std::string> DataParallelBackends() {
  std::vector<std::string> backends;
#ifdef SLIM_WITH_GLOO
  backends.push_back("gloo");
#endif
#ifdef SLIM_WITH_NCCL
  backends.push_back("nccl");
#endif
  return backends;
}

std::unique_ptr<DataParallelGroup> DataParallelGroup::Join(const DataParallelOptions& o,
                                                           const std::string& device_name) {
  ValidateDataParallelOptions(o);
  const c10::Device device = ParseDevice(device_name);
  if (!DataParallelAvailable(device_name)) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "data parallelism: this build has no c10d backend for " + device_name +
                          " (Gloo's headers were not found when slim was built)");
  }
#if defined(SLIM_WITH_GLOO) || defined(SLIM_WITH_NCCL)
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(o.timeout_seconds * 1000)));
  try {
    c10::intrusive_ptr<c10d::Store> store;
    bool loopback = true;
    if (StartsWith(o.init_method, kTcp)) {
      const TcpAddress a = ParseTcp(o.init_method);
      c10d::TCPStoreOptions so;
      so.port = static_cast<uint16_t>(a.port);
      so.isServer = o.rank == 0;
      so.numWorkers = static_cast<size_t>(o.world_size);
      so.waitWorkers = false;  // the backend's rendezvous below waits for every rank
      so.timeout = timeout;
      store = c10::make_intrusive<c10d::TCPStore>(a.host, so);
      loopback = IsLoopback(a.host);
    } else {
      store = c10::make_intrusive<c10d::FileStore>(o.init_method.substr(std::string(kFile).size()), o.world_size);
      store->setTimeout(timeout);
    }
    (void)loopback;  // only Gloo chooses an interface
#ifdef SLIM_WITH_NCCL
    if (device.is_cuda()) {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, o.rank, o.world_size, options);
      return std::make_unique<C10dGroup<c10d::ProcessGroupNCCL>>(store, backend, o, device);
    }
#endif
#ifdef SLIM_WITH_GLOO
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                        : c10d::ProcessGroupGloo::createDefaultDevice());
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world_size, options);
    return std::make_unique<C10dGroup<c10d::ProcessGroupGloo>>(store, backend, o, device);
#endif
  } catch (const EngineError&) {
    throw;
  } catch (const std::exception& e) {
    // A FileStore left by an earlier launch holds that launch's addresses: joining through it
    // fails with "connection refused" (or waits for ranks that are gone).
    const std::string hint = StartsWith(o.init_method, kFile)
                                 ? " (if the file existed before this launch, it is stale: use a new path per launch)"
                                 : "";
    throw EngineError(ErrorCode::kInternal, "data-parallel group: rank " + std::to_string(o.rank) + " of " +
                                                std::to_string(o.world_size) + " could not join at " + o.init_method +
                                                " (waiting up to " + Seconds(o.timeout_seconds) + "): " + Message(e) +
                                                hint);
  }
#endif
  (void)device;
  throw EngineError(ErrorCode::kInternal, "data parallelism: no backend");
}

}  // namespace slim
