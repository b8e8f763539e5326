#include "bench/load/rss_sampler.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/time/clock.h"

namespace slim::load {

std::optional<int64_t> ReadRssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    int64_t kib = 0;
    if (fields >> kib) return kib;  // the kernel writes "VmRSS:   12345 kB"
  }
  return std::nullopt;
}

RssSampler::RssSampler(pid_t pid, absl::Time origin, absl::Duration interval)
    : pid_(pid), origin_(origin), interval_(interval), thread_([this] { Loop(); }) {}

RssSampler::~RssSampler() { Stop(); }

void RssSampler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<RssSampler::Sample> RssSampler::samples() const {
  absl::MutexLock lock(&mu_);
  return samples_;
}

void RssSampler::Loop() {
  absl::Time next = absl::Now();
  while (true) {
    const std::optional<int64_t> kib = ReadRssKib(pid_);
    absl::MutexLock lock(&mu_);
    if (kib.has_value()) samples_.push_back({absl::ToDoubleSeconds(absl::Now() - origin_), *kib});
    next += interval_;
    const auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    if (mu_.AwaitWithDeadline(absl::Condition(&stopping), next)) return;
  }
}

}  // namespace slim::load
