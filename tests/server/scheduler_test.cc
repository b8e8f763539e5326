// The scheduler's placement policy: priority then FIFO, best fit, many jobs per device, kinds,
// backfill, shrink-to-fit of lower-priority jobs and their growing back.
#include "server/sched/scheduler.h"

#include <gtest/gtest.h>

namespace slim::server {
namespace {

constexpr int64_t kMiB = 1 << 20;

std::vector<DeviceCapacity> TwoCpus() {
  return {{"cpu:0", "cpu", 100 * kMiB}, {"cpu:1", "cpu", 60 * kMiB}};
}

TEST(Scheduler, BestFitPacksManyJobsPerDevice) {
  const ScheduleDecision d =
      Schedule(TwoCpus(), {}, {{"a", "", 0, 50 * kMiB, 1}, {"b", "", 0, 40 * kMiB, 2}, {"c", "", 0, 30 * kMiB, 3}});
  ASSERT_EQ(d.placements.size(), 3u);
  // a (50) best-fits cpu:1 (60 free → 10); b (40) then fits only cpu:0 (100 → 60); c (30) best-fits cpu:0.
  EXPECT_EQ(d.placements[0].device, "cpu:1");
  EXPECT_EQ(d.placements[1].device, "cpu:0");
  EXPECT_EQ(d.placements[2].device, "cpu:0");
  EXPECT_TRUE(d.shrinks.empty());
}

TEST(Scheduler, PriorityThenFifo) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  const ScheduleDecision d = Schedule(one, {}, {{"old", "", 0, 60 * kMiB, 1}, {"new", "", 0, 60 * kMiB, 2},
                                                {"urgent", "", 5, 60 * kMiB, 3}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].job_id, "urgent");
  const auto positions = QueuePositions({{"old", "", 0, 1, 1}, {"new", "", 0, 1, 2}, {"urgent", "", 5, 1, 3}});
  EXPECT_EQ(positions[0], (std::pair<std::string, int>{"urgent", 1}));
  EXPECT_EQ(positions[1], (std::pair<std::string, int>{"old", 2}));
  EXPECT_EQ(positions[2], (std::pair<std::string, int>{"new", 3}));
}

TEST(Scheduler, RunningJobsCommitMemoryAndKindsMustMatch) {
  const std::vector<DeviceCapacity> devices = {{"cpu:0", "cpu", 100 * kMiB}, {"cuda:0", "cuda", 100 * kMiB}};
  const std::vector<RunningJob> running = {{"r", "cpu:0", 0, 80 * kMiB, 0, 0}};
  const ScheduleDecision d = Schedule(devices, running, {{"cpu-job", "cpu", 0, 30 * kMiB, 1},
                                                         {"gpu-job", "cuda", 0, 30 * kMiB, 2}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].job_id, "gpu-job");
  EXPECT_EQ(d.placements[0].device, "cuda:0");
}

TEST(Scheduler, SmallJobsBackfillAroundALargeOne) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  const std::vector<RunningJob> running = {{"r", "cpu:0", 0, 50 * kMiB, 0, 0}};
  const ScheduleDecision d = Schedule(one, running, {{"large", "", 0, 80 * kMiB, 1}, {"small", "", 0, 20 * kMiB, 2}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].job_id, "small");
}

TEST(Scheduler, HigherPriorityJobShrinksLowerPriorityOnes) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  const std::vector<RunningJob> running = {{"low-old", "cpu:0", 0, 50 * kMiB, 20 * kMiB, 1},
                                           {"low-new", "cpu:0", 0, 40 * kMiB, 30 * kMiB, 2},
                                           {"peer", "cpu:0", 3, 10 * kMiB, 5 * kMiB, 3}};
  // 0 MiB free; the priority-3 job needs 35: low-new gives 10 (to its minimum 30), low-old 25.
  const ScheduleDecision d = Schedule(one, running, {{"vip", "", 3, 35 * kMiB, 4}});
  EXPECT_TRUE(d.placements.empty());  // placed once the shrinks are confirmed
  ASSERT_EQ(d.shrinks.size(), 2u);
  EXPECT_EQ(d.shrinks[0].job_id, "low-new");
  EXPECT_EQ(d.shrinks[0].quota_bytes, 30 * kMiB);
  EXPECT_EQ(d.shrinks[1].job_id, "low-old");
  EXPECT_EQ(d.shrinks[1].quota_bytes, 25 * kMiB);
  EXPECT_EQ(d.shrinks[1].for_job_id, "vip");

  // After the shrinks, the next pass places it.
  const std::vector<RunningJob> shrunk = {{"low-old", "cpu:0", 0, 25 * kMiB, 20 * kMiB, 1},
                                          {"low-new", "cpu:0", 0, 30 * kMiB, 30 * kMiB, 2},
                                          {"peer", "cpu:0", 3, 10 * kMiB, 5 * kMiB, 3}};
  const ScheduleDecision next = Schedule(one, shrunk, {{"vip", "", 3, 35 * kMiB, 4}});
  ASSERT_EQ(next.placements.size(), 1u);
  EXPECT_TRUE(next.shrinks.empty());
}

RunningJob Shrunk(const std::string& id, int64_t quota, int64_t requested, int priority, int64_t order) {
  RunningJob r{id, "cpu:0", priority, quota, quota / 2, order};
  r.requested_quota_bytes = requested;
  return r;
}

TEST(Scheduler, ShrunkJobsGrowBackWhenNobodyWaitsForTheRoom) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  // The vip that shrank them has ended: 45 MiB free; low-old wants 25 more, low-new 10 more.
  const std::vector<RunningJob> running = {Shrunk("low-old", 25 * kMiB, 50 * kMiB, 0, 1),
                                           Shrunk("low-new", 30 * kMiB, 40 * kMiB, 0, 2)};
  const ScheduleDecision d = Schedule(one, running, {});
  ASSERT_EQ(d.grows.size(), 2u);
  EXPECT_EQ(d.grows[0].job_id, "low-old");  // oldest first among equal priorities
  EXPECT_EQ(d.grows[0].quota_bytes, 50 * kMiB);
  EXPECT_EQ(d.grows[1].job_id, "low-new");
  EXPECT_EQ(d.grows[1].quota_bytes, 40 * kMiB);

  // Room for only one: the higher priority grows, the other waits (no partial growth).
  const std::vector<RunningJob> tight = {Shrunk("low", 25 * kMiB, 50 * kMiB, 0, 1),
                                         Shrunk("mid", 30 * kMiB, 60 * kMiB, 1, 2),
                                         {"other", "cpu:0", 0, 15 * kMiB, 0, 3}};
  const ScheduleDecision t = Schedule(one, tight, {});
  ASSERT_EQ(t.grows.size(), 1u);
  EXPECT_EQ(t.grows[0].job_id, "mid");
}

TEST(Scheduler, NoGrowBackWhileAQueuedJobCouldUseTheRoomOrAChangeIsInFlight) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  const std::vector<RunningJob> running = {Shrunk("low", 25 * kMiB, 50 * kMiB, 0, 1)};
  // A queued job too large for the free 75 MiB, but not for the device: it waits for room
  // (shrinking `low` further is not possible: priority 0 cannot shrink priority 0).
  const ScheduleDecision waiting = Schedule(one, running, {{"big", "", 0, 90 * kMiB, 2}});
  EXPECT_TRUE(waiting.placements.empty());
  EXPECT_TRUE(waiting.grows.empty());
  // A queued job no device of its kind can take does not block growth.
  const ScheduleDecision other_kind = Schedule(one, running, {{"gpu", "cuda", 0, 10 * kMiB, 2}});
  ASSERT_EQ(other_kind.grows.size(), 1u);
  // A job placed in this pass takes the room first; growth waits for the next pass.
  const ScheduleDecision placed = Schedule(one, running, {{"small", "", 0, 10 * kMiB, 2}});
  ASSERT_EQ(placed.placements.size(), 1u);
  EXPECT_TRUE(placed.grows.empty());
  // A shrink or grow in flight on the device: nothing more until the worker confirms.
  RunningJob pending = Shrunk("low", 25 * kMiB, 50 * kMiB, 0, 1);
  pending.quota_change_pending = true;
  EXPECT_TRUE(Schedule(one, {pending}, {}).grows.empty());
  // Not shrunk: nothing to grow.
  EXPECT_TRUE(Schedule(one, {{"full", "cpu:0", 0, 50 * kMiB, 25 * kMiB, 1}}, {}).grows.empty());
}

TEST(Scheduler, NoShrinkForEqualPriorityOrBeyondMinimums) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB}};
  const std::vector<RunningJob> running = {{"a", "cpu:0", 1, 60 * kMiB, 50 * kMiB, 1},
                                           {"b", "cpu:0", 2, 40 * kMiB, 10 * kMiB, 2}};
  // Priority 2 may shrink only `a` (priority 1), which can give 10 MiB: not enough for 30.
  const ScheduleDecision d = Schedule(one, running, {{"c", "", 2, 30 * kMiB, 3}});
  EXPECT_TRUE(d.placements.empty());
  EXPECT_TRUE(d.shrinks.empty());
}

TEST(Scheduler, GangTakesEveryDeviceItNeedsAtOnceOrWaits) {
  const std::vector<DeviceCapacity> three = {
      {"cpu:0", "cpu", 100 * kMiB}, {"cpu:1", "cpu", 60 * kMiB}, {"cpu:2", "cpu", 80 * kMiB}};
  // 2 ranks of 50 MiB: all three devices have room; the tightest two are taken, rank 0 on the tightest.
  ScheduleDecision d = Schedule(three, {}, {{"gang", "", 0, 50 * kMiB, 1, 2}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].device, "cpu:1");
  EXPECT_EQ(d.placements[0].devices, (std::vector<std::string>{"cpu:1", "cpu:2"}));

  // Only one device still has room for a 3-rank gang of 70 MiB: nothing is placed, no shrinks,
  // and a later small job backfills.
  const std::vector<RunningJob> running = {{"r", "cpu:2", 0, 30 * kMiB, 10 * kMiB, 1}};
  d = Schedule(three, running, {{"gang", "", 5, 70 * kMiB, 2, 3}, {"small", "", 0, 20 * kMiB, 3}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].job_id, "small");
  EXPECT_EQ(d.placements[0].devices, (std::vector<std::string>{"cpu:2"}));
  EXPECT_TRUE(d.shrinks.empty()) << "gangs do not shrink other jobs";

  // A gang's ranks commit memory on each of their devices, and are never shrunk.
  const std::vector<RunningJob> gang = {{"gang", "cpu:0", 0, 60 * kMiB, 0, 1}, {"gang", "cpu:1", 0, 60 * kMiB, 0, 1}};
  d = Schedule(three, gang, {{"a", "", 9, 50 * kMiB, 2}, {"b", "", 9, 50 * kMiB, 3}});
  ASSERT_EQ(d.placements.size(), 1u);
  EXPECT_EQ(d.placements[0].device, "cpu:2");
  EXPECT_TRUE(d.shrinks.empty());
}

TEST(Scheduler, JobsThatCanNeverBePlacedSayWhy) {
  const std::vector<DeviceCapacity> devices = {{"cpu:0", "cpu", 100 * kMiB}, {"cpu:1", "cpu", 60 * kMiB}};
  EXPECT_EQ(WhyNeverPlaceable(devices, {"a", "cpu", 0, 80 * kMiB, 1}), "");
  EXPECT_EQ(WhyNeverPlaceable(devices, {"a", "", 0, 50 * kMiB, 1, 2}), "");
  EXPECT_EQ(WhyNeverPlaceable(devices, {"a", "cpu", 0, 80 * kMiB, 1, 2}),
            "needs 2 cpu devices with 80.0 MiB each; there is 1");
  EXPECT_EQ(WhyNeverPlaceable(devices, {"a", "cpu", 0, 10 * kMiB, 1, 3}),
            "needs 3 cpu devices with 10.0 MiB each; there are 2");
  EXPECT_EQ(WhyNeverPlaceable(devices, {"a", "cuda", 0, 10 * kMiB, 1}), "needs 1 cuda device with 10.0 MiB; there are 0");
}

// Each process costs its quota plus its device's worker footprint: running jobs and
// reservations included, placements, shrinks and never-placeable answers alike.
TEST(Scheduler, WorkerFootprintsAreCommittedBesideQuotas) {
  const std::vector<DeviceCapacity> one = {{"cpu:0", "cpu", 100 * kMiB, 20 * kMiB}};
  // Two 30 MiB jobs commit 2 × (30 + 20) = 100: both fit; a third of 1 MiB no longer does.
  ScheduleDecision d = Schedule(one, {}, {{"a", "", 0, 30 * kMiB, 1}, {"b", "", 0, 30 * kMiB, 2}, {"c", "", 0, kMiB, 3}});
  ASSERT_EQ(d.placements.size(), 2u);
  EXPECT_EQ(d.placements[1].job_id, "b");
  // Without footprints all three would fit.
  d = Schedule({{"cpu:0", "cpu", 100 * kMiB}}, {},
               {{"a", "", 0, 30 * kMiB, 1}, {"b", "", 0, 30 * kMiB, 2}, {"c", "", 0, kMiB, 3}});
  EXPECT_EQ(d.placements.size(), 3u);
  // A running job (or a reservation) commits its footprint too: 40 + 20 leaves 40, and a 30 MiB
  // job needs 50.
  d = Schedule(one, {{"r", "cpu:0", 0, 40 * kMiB, 0, 0}}, {{"a", "", 0, 30 * kMiB, 1}});
  EXPECT_TRUE(d.placements.empty());
  d = Schedule(one, {{"r", "cpu:0", 0, 40 * kMiB, 0, 0}}, {{"a", "", 0, 20 * kMiB, 1}});
  EXPECT_EQ(d.placements.size(), 1u);
  // Shrinking makes room for the newcomer's quota and footprint: 40 + 20 running leaves 40, the
  // urgent 30 MiB job needs 50, so the running job gives 10 (down to 30 MiB).
  d = Schedule(one, {{"r", "cpu:0", 0, 40 * kMiB, 10 * kMiB, 0}}, {{"urgent", "", 5, 30 * kMiB, 1}});
  ASSERT_EQ(d.shrinks.size(), 1u);
  EXPECT_EQ(d.shrinks[0].quota_bytes, 30 * kMiB);
  // 90 MiB fits 100 MiB by quota, not with the footprint.
  EXPECT_EQ(WhyNeverPlaceable(one, {"big", "cpu", 0, 90 * kMiB, 1}),
            "needs 1 cpu device with 90.0 MiB plus the worker footprint (20.0 MiB); there are 0");
  EXPECT_EQ(WhyNeverPlaceable(one, {"ok", "cpu", 0, 80 * kMiB, 1}), "");
}

}  // namespace
}  // namespace slim::server
