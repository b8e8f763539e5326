// slim-load's computations: nearest-rank percentiles, per-status call counts, steps per second
// and reporting cadence from progress events, silences on a stream, and reading VmRSS.
#include <unistd.h>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "bench/load/rss_sampler.h"
#include "bench/load/stats.h"

namespace slim::load {
namespace {

TEST(PercentileTest, NearestRank) {
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 0.50), 50);
  EXPECT_EQ(Percentile(v, 0.99), 99);
  EXPECT_EQ(Percentile(v, 1.0), 100);
  EXPECT_EQ(Percentile({7}, 0.99), 7);
  EXPECT_EQ(Percentile({}, 0.5), 0);
  // 10 values: p99 is the largest (rank ceil(9.9) = 10), p90 the ninth.
  const std::vector<double> ten = {1, 2, 3, 4, 5, 6, 7, 8, 9, 1000};
  EXPECT_EQ(Percentile(ten, 0.99), 1000);
  EXPECT_EQ(Percentile(ten, 0.90), 9);
}

TEST(SummarizeTest, UnsortedInput) {
  const Summary s = Summarize({5, 1, 4, 2, 3});
  EXPECT_EQ(s.count, 5);
  EXPECT_EQ(s.min, 1);
  EXPECT_EQ(s.max, 5);
  EXPECT_EQ(s.p50, 3);
  EXPECT_DOUBLE_EQ(s.mean, 3);
  EXPECT_EQ(Summarize({}).count, 0);
}

TEST(MethodStatsTest, CountsErrorsByStatusName) {
  MethodStats stats;
  stats.Record(1.0, grpc::StatusCode::OK);
  stats.Record(3.0, grpc::StatusCode::OK);
  stats.Record(50.0, grpc::StatusCode::DEADLINE_EXCEEDED);
  stats.Record(2.0, grpc::StatusCode::UNAVAILABLE);
  stats.Record(2.0, grpc::StatusCode::UNAVAILABLE);
  const MethodStats::Result r = stats.Get();
  EXPECT_EQ(r.ok, 2);
  EXPECT_EQ(r.latency_ms.count, 5);  // errors are in the latency summary too
  EXPECT_EQ(r.latency_ms.max, 50);
  EXPECT_EQ(r.errors.at("DEADLINE_EXCEEDED"), 1);
  EXPECT_EQ(r.errors.at("UNAVAILABLE"), 2);
  EXPECT_EQ(r.errors.count("OK"), 0u);
}

ProgressLog Log(const std::vector<std::pair<double, int64_t>>& points, absl::Time origin) {
  ProgressLog log;
  int64_t sequence = 0;
  for (const auto& [seconds, step] : points) {
    ++sequence;
    log[sequence] = {"job-1", sequence, origin + absl::Seconds(seconds), step};
  }
  return log;
}

TEST(StepsPerSecondTest, FirstAndLastEventInTheWindow) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const ProgressLog log = Log({{0, 0}, {1, 10}, {2, 20}, {3, 25}, {4, 30}, {10, 90}}, t0);
  // [0.5, 4.5]: events at 1 s (step 10) and 4 s (step 30): 20 steps in 3 s.
  EXPECT_DOUBLE_EQ(*StepsPerSecond(log, t0 + absl::Seconds(0.5), t0 + absl::Seconds(4.5)), 20.0 / 3);
  EXPECT_DOUBLE_EQ(*StepsPerSecond(log, t0, t0 + absl::Seconds(10)), 9);
  EXPECT_FALSE(StepsPerSecond(log, t0 + absl::Seconds(5), t0 + absl::Seconds(9)).has_value());   // none
  EXPECT_FALSE(StepsPerSecond(log, t0 + absl::Seconds(9), t0 + absl::Seconds(11)).has_value());  // one
}

TEST(LongestProgressIntervalTest, BetweenEventsInTheWindow) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const ProgressLog log = Log({{0, 0}, {1, 10}, {2, 20}, {4.5, 25}, {5, 30}, {10, 90}}, t0);
  EXPECT_DOUBLE_EQ(LongestProgressIntervalSeconds(log, t0, t0 + absl::Seconds(6)), 2.5);
  EXPECT_DOUBLE_EQ(LongestProgressIntervalSeconds(log, t0 + absl::Seconds(9), t0 + absl::Seconds(11)), 0);
}

TEST(LongestGapTest, EdgesOfTheWindowCount) {
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const auto at = [&](double s) { return t0 + absl::Seconds(s); };
  // Messages at 1, 2, 3 in a window [0, 10]: the silence after the last one is the longest.
  EXPECT_DOUBLE_EQ(LongestGapSeconds({at(1), at(2), at(3)}, at(0), at(10)), 7);
  // Messages before the window are ignored; the gap from the window's start counts.
  EXPECT_DOUBLE_EQ(LongestGapSeconds({at(-5), at(4), at(5), at(6)}, at(0), at(6.5)), 4);
  EXPECT_DOUBLE_EQ(LongestGapSeconds({}, at(0), at(3)), 3);
  EXPECT_DOUBLE_EQ(LongestGapSeconds({at(0.5), at(2), at(2.5), at(11)}, at(0), at(3)), 1.5);
}

TEST(ReadRssKibTest, OwnProcessAndMissingProcess) {
  const std::optional<int64_t> self = ReadRssKib(::getpid());
  ASSERT_TRUE(self.has_value());
  EXPECT_GT(*self, 0);
  EXPECT_FALSE(ReadRssKib(0x3fffffff).has_value());  // above pid_max: no such process
}

TEST(RssSamplerTest, SamplesUntilStopped) {
  RssSampler sampler(::getpid(), absl::Now(), absl::Milliseconds(10));
  // Polled: the sampler has no signal to wait on, and a busy machine may delay its thread (the
  // test's timeout bounds this loop).
  while (sampler.samples().size() < 3) absl::SleepFor(absl::Milliseconds(5));
  sampler.Stop();
  const std::vector<RssSampler::Sample> samples = sampler.samples();
  ASSERT_GE(samples.size(), 3u);
  for (size_t i = 1; i < samples.size(); ++i) EXPECT_GE(samples[i].seconds, samples[i - 1].seconds);
  EXPECT_GT(samples.front().kib, 0);
  const size_t count = samples.size();
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(sampler.samples().size(), count);  // stopped means stopped
}

}  // namespace
}  // namespace slim::load
