// Data-parallel training: N ranks — threads of this test, each running RunTraining, joined
// through a c10d FileStore and Gloo — train what one worker trains with the same global batch.
// Losses, gradient norms, evaluations and final weights match the single-worker run up to float
// summation order; a stop asked of one rank stops all after the same step with rank 0's
// checkpoint, which resumes with another number of workers; a failed, hung or mismatched rank
// makes the others fail with a clear error instead of hanging.
//
// Tolerances (relative; weights norm-wise per tensor, max|a − b| / max|b| as in test_util.h).
// Within a step each rank sums the gradient over its share of the batch and the group adds the
// shares, where one worker sums the whole batch inside one matmul: the same terms in another
// order, so the gradients differ by fp32 rounding (~1e-7 relative) and nothing else.
//  - Losses, gradient norms, evaluations: measured ≤ 2e-7 over 8 steps; bound 1e-6.
//  - Weights after SGD (linear in the gradient): measured 2e-7; bound 1e-6.
//  - Weights after AdamW: measured 1.3e-5; bound 1e-4. AdamW divides each coordinate's update
//    by √v + eps, so a coordinate whose gradient nearly cancels to |g| ≈ eps = 1e-8 turns an
//    absolute rounding difference δg into an update difference of about lr · δg / eps — the
//    amplification is the optimizer's, not data parallelism's.
// What the bounds catch: a wrong data order or share changes the first loss by > 1e-3; a wrong
// normaliser (local instead of global target count) doubles the loss and the gradient norm (and
// the SGD step); training moves the weights by > 1e-2 relative, far outside every bound.
#include "engine/data_parallel.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "base/errors.h"
#include "engine/model_file.h"
#include "engine/trainer.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

namespace fs = std::filesystem;

constexpr double kLossTolerance = 1e-6;
constexpr double kAdamWWeightTolerance = 1e-4;
constexpr double kSgdWeightTolerance = 1e-6;

std::string SampleText(size_t bytes, uint64_t seed) {
  static const char* kWords[] = {"the", "memory", "of", "a", "performer", "is", "linear", "in",
                                 "chunk", "size", "and", "sequence", "length", "state", "slim"};
  std::mt19937_64 rng(seed);
  std::string text;
  while (text.size() < bytes) {
    text += kWords[rng() % 15];
    text += (rng() % 9 == 0) ? ".\n" : " ";
  }
  return text;
}

struct Recorder {
  std::vector<TrainingEvent> events;
  std::vector<double> losses, grad_norms, eval_losses;
  void operator()(const TrainingEvent& e) {
    events.push_back(e);
    if (e.kind == EventKind::kProgress) {
      losses.push_back(e.loss);
      grad_norms.push_back(e.grad_norm);
    }
    if (e.kind == EventKind::kEval) eval_losses.push_back(e.eval_loss);
  }
  int Count(EventKind k) const {
    int n = 0;
    for (const auto& e : events) n += e.kind == k;
    return n;
  }
};

// One rank's run: what it reported and how it ended.
struct RankRun {
  Recorder recorder;
  TrainingResult result;
  std::exception_ptr error;
  std::string ErrorMessage() const {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  }
  ErrorCode ErrorCodeOr(ErrorCode fallback) const {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const EngineError& e) {
      return e.code();
    } catch (...) {
    }
    return fallback;
  }
};

double MaxRelDiff(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, std::fabs(a[i] - b[i]) / std::max(std::fabs(b[i]), 1e-30));
  }
  return worst;
}

// max over parameters of the norm-wise relative difference (test_util.h's RelErr).
double ModelRelDiff(const std::string& a, const std::string& b) {
  PerformerLM x = LoadModelFile(a), y = LoadModelFile(b);
  const auto ys = y->named_parameters();
  double worst = 0;
  for (const auto& p : x->named_parameters()) worst = std::max(worst, testing::RelErr(p.value(), ys[p.key()]));
  return worst;
}

class DataParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DataParallelAvailable("cpu")) GTEST_SKIP() << "built without c10d Gloo";
    dir_ = testing::TempPath("data_parallel");
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    testing::WriteFileBytes(dir_ + "/train.txt", SampleText(12000, 1));
    // favor+ features redrawn every 3 steps: ranks must redraw identically.
    ModelConfig config = PresetConfig("tiny");
    config.redraw_interval = 3;
    PerformerLM base(config, 7);
    SaveModelFile(*base, dir_ + "/base.safetensors");
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // batch 4 in 2 micro-batches per step; clipping at 0.5 is active on most steps (checked).
  JobSpec Spec() const {
    JobSpec s;
    s.base_model = dir_ + "/base.safetensors";
    DataSource d;
    d.path = dir_ + "/train.txt";
    s.train_data = {d};
    s.validation_fraction = 0.1;
    s.seq_len = 48;
    s.batch_size = 4;
    s.grad_accum = 2;
    s.steps = 8;
    s.lr = 3e-3;
    s.weight_decay = 0.01;
    s.grad_clip = 0.5;
    s.schedule = LrScheduleKind::kCosine;
    s.warmup_steps = 2;
    s.chunk_size = 16;  // three slices per sequence
    s.eval_every = 4;
    s.eval_max_sequences = 10;  // two ranks evaluate 5 batches of 2 (3 on rank 0, 2 on rank 1)
    return s;
  }

  TrainerOptions Options(const std::string& out, Recorder* recorder) const {
    TrainerOptions o;
    o.out_dir = out;
    o.progress_interval_seconds = 0;
    o.on_event = [recorder](const TrainingEvent& e) { (*recorder)(e); };
    return o;
  }

  // How RunGroup runs the ranks.
  struct GroupOptions {
    std::function<void(int, TrainerOptions&)> customize;  // adjusts a rank's options
    std::function<void(int)> on_done;                      // called when a rank's run has ended
    double timeout_seconds = 60;
    std::vector<JobSpec> specs;  // per rank; empty: the same spec everywhere
  };

  // Runs `spec` on spec.workers ranks, one thread each, meeting at a fresh FileStore path.
  std::vector<RankRun> RunGroup(const JobSpec& spec, const std::string& out) {
    return RunGroup(spec, out, GroupOptions());
  }
  std::vector<RankRun> RunGroup(const JobSpec& spec, const std::string& out, const GroupOptions& g) {
    const int world = static_cast<int>(spec.workers);
    std::vector<RankRun> runs(world);
    const std::string init = "file://" + dir_ + "/init-" + std::to_string(++groups_);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < world; ++rank) {
      threads.emplace_back([&, rank] {
        RankRun& run = runs[rank];
        TrainerOptions o = Options(out, &run.recorder);
        o.data_parallel.rank = rank;
        o.data_parallel.world_size = world;
        o.data_parallel.init_method = init;
        o.data_parallel.timeout_seconds = g.timeout_seconds;
        if (g.customize) g.customize(rank, o);
        try {
          run.result = RunTraining(g.specs.empty() ? spec : g.specs[rank], o);
        } catch (...) {
          run.error = std::current_exception();
        }
        if (g.on_done) g.on_done(rank);
      });
    }
    for (auto& t : threads) t.join();
    return runs;
  }

  std::string dir_;
  int groups_ = 0;
};

TEST_F(DataParallelTest, TwoRanksEqualTheSingleWorkerRun) {
  const JobSpec single = Spec();
  Recorder reference;
  const TrainingResult a = RunTraining(single, Options(dir_ + "/single", &reference));
  ASSERT_EQ(reference.losses.size(), 8u);
  int clipped = 0;
  for (double n : reference.grad_norms) clipped += n > single.grad_clip;
  EXPECT_GE(clipped, 4) << "clipping should be exercised";

  JobSpec spec = single;
  spec.workers = 2;
  const std::vector<RankRun> runs = RunGroup(spec, dir_ + "/group");
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(runs[r].error) << "rank " << r << ": " << runs[r].ErrorMessage();
    EXPECT_EQ(runs[r].result.outcome, TrainingOutcome::kFinished);
    EXPECT_EQ(runs[r].result.steps, 8);
  }
  const Recorder& lead = runs[0].recorder;
  // Rank 0 reports the job; rank 1 only its own start.
  ASSERT_EQ(lead.losses.size(), 8u);
  EXPECT_EQ(lead.Count(EventKind::kEval), 2);
  EXPECT_EQ(lead.Count(EventKind::kFinished), 1);
  ASSERT_EQ(runs[1].recorder.events.size(), 1u);
  const TrainingEvent& started1 = runs[1].recorder.events[0];
  EXPECT_EQ(started1.kind, EventKind::kStarted);
  EXPECT_EQ(started1.rank, 1);
  EXPECT_EQ(started1.world_size, 2);
  EXPECT_EQ(lead.events.front().rank, 0);
  EXPECT_EQ(lead.events.back().tokens, reference.events.back().tokens);  // global tokens

  const double loss_diff = MaxRelDiff(lead.losses, reference.losses);
  const double norm_diff = MaxRelDiff(lead.grad_norms, reference.grad_norms);
  const double eval_diff = MaxRelDiff(lead.eval_losses, reference.eval_losses);
  const double weight_diff = ModelRelDiff(runs[0].result.model_path, a.model_path);
  std::printf("2 ranks vs 1 worker: losses %.3g, grad norms %.3g, eval %.3g, weights %.3g (relative)\n", loss_diff,
              norm_diff, eval_diff, weight_diff);
  EXPECT_LE(loss_diff, kLossTolerance);
  EXPECT_LE(norm_diff, kLossTolerance);
  EXPECT_LE(eval_diff, kLossTolerance);
  EXPECT_LE(weight_diff, kAdamWWeightTolerance);
  // The training moved the weights far more than the tolerance: the check has teeth.
  const double moved = ModelRelDiff(a.model_path, spec.base_model);
  std::printf("training moved the weights by %.3g (relative)\n", moved);
  EXPECT_GT(moved, 100 * kAdamWWeightTolerance);
}

// SGD (whose step is linear in the gradient, so a wrong normaliser shows at once), three ranks
// with uneven shares (1, 1, 2 of 4), a stop asked of rank 1 alone, and resumes of rank 0's
// checkpoint by three ranks and by one worker: all match the uninterrupted single-worker run.
TEST_F(DataParallelTest, StopOnOneRankStopsAllAndResumesWithOtherWorkerCounts) {
  JobSpec single = Spec();
  single.optimizer = OptimizerKind::kSgd;
  single.momentum = 0.9;
  single.lr = 0.05;
  single.schedule = LrScheduleKind::kConstant;
  single.warmup_steps = 0;
  single.eval_every = 0;
  Recorder reference;
  const TrainingResult a = RunTraining(single, Options(dir_ + "/single", &reference));

  JobSpec spec = single;
  spec.workers = 2;
  // Rank 0's report of step 3 asks rank 1 (only) to stop. Rank 1 sees the request after step 3
  // or, if it had already passed that check, after step 4; either way both stop together.
  std::atomic<bool> stop_rank1{false};
  GroupOptions g;
  g.customize = [&](int rank, TrainerOptions& o) {
    if (rank == 1) {
      o.stop_requested = &stop_rank1;
    } else {
      auto record = o.on_event;
      o.on_event = [&stop_rank1, record](const TrainingEvent& e) {
        record(e);
        if (e.kind == EventKind::kProgress && e.step == 3) stop_rank1 = true;
      };
    }
  };
  const std::vector<RankRun> stopped = RunGroup(spec, dir_ + "/group", g);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(stopped[r].error) << "rank " << r << ": " << stopped[r].ErrorMessage();
    EXPECT_EQ(stopped[r].result.outcome, TrainingOutcome::kStopped) << "rank " << r;
  }
  const int64_t at = stopped[0].result.steps;
  EXPECT_TRUE(at == 3 || at == 4) << at;
  EXPECT_EQ(stopped[1].result.steps, at);
  EXPECT_EQ(stopped[0].recorder.Count(EventKind::kStopped), 1);
  EXPECT_EQ(stopped[1].recorder.Count(EventKind::kStopped), 0);
  ASSERT_TRUE(fs::exists(stopped[0].result.checkpoint_path));
  EXPECT_EQ(stopped[1].result.checkpoint_path, stopped[0].result.checkpoint_path);
  fs::copy(dir_ + "/group", dir_ + "/copy", fs::copy_options::recursive);

  // Resume with three ranks: shares of 1, 1 and 2 sequences.
  JobSpec three = single;
  three.workers = 3;
  const std::vector<RankRun> resumed = RunGroup(three, dir_ + "/group");
  for (int r = 0; r < 3; ++r) ASSERT_FALSE(resumed[r].error) << "rank " << r << ": " << resumed[r].ErrorMessage();
  EXPECT_EQ(resumed[0].recorder.events.front().resumed_from_step, at);
  EXPECT_EQ(resumed[2].recorder.events.front().resumed_from_step, at);

  // Resume with one worker.
  Recorder alone;
  const TrainingResult b = RunTraining(single, Options(dir_ + "/copy", &alone));

  const std::vector<const std::vector<double>*> rests = {&resumed[0].recorder.losses, &alone.losses};
  for (const std::vector<double>* rest : rests) {
    std::vector<double> joined = stopped[0].recorder.losses;
    joined.insert(joined.end(), rest->begin(), rest->end());
    const double diff = MaxRelDiff(joined, reference.losses);
    std::printf("stopped at %lld and resumed: losses %.3g relative\n", static_cast<long long>(at), diff);
    EXPECT_LE(diff, kLossTolerance);
  }
  const double three_diff = ModelRelDiff(resumed[0].result.model_path, a.model_path);
  const double one_diff = ModelRelDiff(b.model_path, a.model_path);
  std::printf("weights: 2 then 3 ranks %.3g, 2 ranks then 1 worker %.3g (relative)\n", three_diff, one_diff);
  EXPECT_LE(three_diff, kSgdWeightTolerance);
  EXPECT_LE(one_diff, kSgdWeightTolerance);
  const double moved = ModelRelDiff(a.model_path, spec.base_model);
  std::printf("training moved the weights by %.3g (relative)\n", moved);
  EXPECT_GT(moved, 100 * kSgdWeightTolerance);
}

// A rank that fails makes the others fail at their next collective, naming the cause.
TEST_F(DataParallelTest, AFailedRankMakesTheOthersFail) {
  JobSpec spec = Spec();
  spec.workers = 2;
  GroupOptions g;
  g.customize = [](int rank, TrainerOptions& o) {
    if (rank == 1) o.on_event = [](const TrainingEvent&) { throw EngineError(ErrorCode::kInternal, "rank 1 broke"); };
  };
  const std::vector<RankRun> runs = RunGroup(spec, dir_ + "/group", g);
  ASSERT_TRUE(runs[1].error);
  EXPECT_EQ(runs[1].ErrorMessage(), "rank 1 broke");
  ASSERT_TRUE(runs[0].error) << "rank 0 finished without its peer";
  EXPECT_EQ(runs[0].ErrorCodeOr(ErrorCode::kInvalidArgument), ErrorCode::kInternal);
  const std::string message = runs[0].ErrorMessage();
  EXPECT_NE(message.find("data-parallel"), std::string::npos) << message;
  EXPECT_NE(message.find("failed on rank 0 of 2: another rank exited, failed or did not answer"), std::string::npos)
      << message;
  EXPECT_EQ(runs[0].recorder.Count(EventKind::kFinished), 0);
}

// A rank that stops answering (here: blocked in its started callback until rank 0 has given
// up) makes the others fail after the timeout rather than wait forever.
TEST_F(DataParallelTest, AHungRankTimesOut) {
  JobSpec spec = Spec();
  spec.workers = 2;
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  GroupOptions g;
  g.timeout_seconds = 2;
  g.customize = [&](int rank, TrainerOptions& o) {
    if (rank != 1) return;
    o.on_event = [&](const TrainingEvent&) {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return released; });
    };
  };
  g.on_done = [&](int rank) {
    if (rank != 0) return;
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  };
  const std::vector<RankRun> runs = RunGroup(spec, dir_ + "/group", g);
  ASSERT_TRUE(runs[0].error) << "rank 0 finished without its peer";
  const std::string message = runs[0].ErrorMessage();
  EXPECT_NE(message.find("failed on rank 0 of 2: another rank exited, failed or did not answer within 2 s"),
            std::string::npos)
      << message;
  // Gloo's own words vary with where the wait was: "Timed out waiting 2000ms for recv ..." or
  // "Application timeout caused pair closure".
  EXPECT_TRUE(message.find("Timed out") != std::string::npos || message.find("timeout") != std::string::npos)
      << message;
  // Released after rank 0 gave up, rank 1 finds no partner either.
  EXPECT_TRUE(runs[1].error);
}

// A rank that never joins: the others give up after the timeout, naming the rendezvous.
TEST_F(DataParallelTest, AMissingRankIsReportedAfterTheTimeout) {
  JobSpec spec = Spec();
  spec.workers = 2;
  Recorder recorder;
  TrainerOptions o = Options(dir_ + "/out", &recorder);
  o.data_parallel.world_size = 2;
  o.data_parallel.init_method = "file://" + dir_ + "/init-alone";
  o.data_parallel.timeout_seconds = 1;
  try {
    RunTraining(spec, o);
    FAIL() << "trained without rank 1";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInternal);
    EXPECT_NE(std::string(e.what()).find("data-parallel group: rank 0 of 2 could not join at file://"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(recorder.events.empty());
}

// Ranks given different specs refuse to train together.
TEST_F(DataParallelTest, RanksWithDifferentSpecsAreRefused) {
  JobSpec spec = Spec();
  spec.workers = 2;
  JobSpec other = spec;
  other.lr = 1e-3;
  GroupOptions g;
  g.specs = {spec, other};
  const std::vector<RankRun> runs = RunGroup(spec, dir_ + "/group", g);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(runs[r].error) << "rank " << r;
    EXPECT_EQ(runs[r].ErrorCodeOr(ErrorCode::kInternal), ErrorCode::kInvalidArgument);
    EXPECT_NE(runs[r].ErrorMessage().find("different model, data or training specs"), std::string::npos)
        << runs[r].ErrorMessage();
  }
}

TEST_F(DataParallelTest, WorkerCountMustMatchTheGroup) {
  JobSpec spec = Spec();
  spec.workers = 2;
  Recorder recorder;
  try {
    RunTraining(spec, Options(dir_ + "/out", &recorder));
    FAIL() << "two workers ran as one";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("data_parallel.workers: 2 workers run as one slim-train process per rank"),
              std::string::npos)
        << e.what();
  }
  EXPECT_TRUE(recorder.events.empty());
}

TEST(DataParallelOptions, AreChecked) {
  const auto message = [](DataParallelOptions o) -> std::string {
    try {
      ValidateDataParallelOptions(o);
    } catch (const EngineError& e) {
      return e.what();
    }
    return "";
  };
  DataParallelOptions o;
  EXPECT_EQ(message(o), "");
  o.world_size = 2;
  o.init_method = "tcp://127.0.0.1:29500";
  EXPECT_EQ(message(o), "");
  o.init_method = "file:///tmp/x";
  EXPECT_EQ(message(o), "");
  o.rank = 2;
  EXPECT_NE(message(o).find("dist-rank: must be in 0..1, got 2"), std::string::npos);
  o.rank = 1;
  o.init_method = "";
  EXPECT_NE(message(o).find("dist-init: '' must be tcp://HOST:PORT or file://PATH"), std::string::npos);
  o.init_method = "tcp://host";
  EXPECT_NE(message(o).find("is not tcp://HOST:PORT"), std::string::npos);
  o.init_method = "tcp://host:70000";
  EXPECT_NE(message(o).find("port in 1..65535"), std::string::npos);
  o.init_method = "file://";
  EXPECT_NE(message(o).find("file:// needs a path"), std::string::npos);
  o.init_method = "file:///tmp/x";
  o.timeout_seconds = 0;
  EXPECT_NE(message(o).find("dist-timeout: must be > 0"), std::string::npos);
}

}  // namespace
}  // namespace slim
