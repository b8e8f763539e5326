// Training runs from job specs: resume after a stop continues bit for bit (weights, optimizer,
// data position, schedule, feature redraws), damaged checkpoints are detected and reported,
// bad data is refused before the first step, LoRA trains only its adapters and merges exactly.
#include "engine/trainer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/calibration.h"
#include "engine/checkpoint.h"
#include "base/errors.h"
#include "engine/model_file.h"
#include "tests/engine/test_util.h"

namespace slim {
namespace {

namespace fs = std::filesystem;

// Deterministic English-like bytes: words from a small list, so there is something to learn.
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

// A fresh directory under gtest's temp dir.
std::string TempDir(const std::string& name) {
  const std::string dir = testing::TempPath(name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

struct Recorder {
  std::vector<TrainingEvent> events;
  std::vector<double> losses;  // progress losses by step, in order
  void operator()(const TrainingEvent& e) {
    events.push_back(e);
    if (e.kind == EventKind::kProgress) losses.push_back(e.loss);
  }
  int Count(EventKind k) const {
    int n = 0;
    for (const auto& e : events) n += e.kind == k;
    return n;
  }
};

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("trainer");
    testing::WriteFileBytes(dir_ + "/train.txt", SampleText(12000, 1));
    // A base model whose favor+ features are redrawn every 3 steps, so resuming crosses redraws.
    ModelConfig config = PresetConfig("tiny");
    config.redraw_interval = 3;
    PerformerLM base(config, 7);
    SaveModelFile(*base, dir_ + "/base.safetensors");
  }
  void TearDown() override { fs::remove_all(dir_); }

  JobSpec Spec() const {
    JobSpec s;
    s.base_model = dir_ + "/base.safetensors";
    DataSource d;
    d.path = dir_ + "/train.txt";
    s.train_data = {d};
    s.validation_fraction = 0.1;
    s.seq_len = 48;
    s.batch_size = 2;
    s.grad_accum = 2;
    s.steps = 8;
    s.lr = 3e-3;
    s.weight_decay = 0.01;
    s.schedule = LrScheduleKind::kCosine;
    s.warmup_steps = 2;
    s.chunk_size = 16;  // three slices per sequence
    s.eval_every = 4;
    s.eval_max_sequences = 4;
    return s;
  }

  TrainingResult Run(const JobSpec& spec, const std::string& out, Recorder* recorder,
                     const std::atomic<bool>* stop = nullptr, bool resume = true) {
    TrainerOptions o;
    o.out_dir = out;
    o.progress_interval_seconds = 0;
    o.stop_requested = stop;
    o.resume = resume;
    o.on_event = [recorder](const TrainingEvent& e) { (*recorder)(e); };
    return RunTraining(spec, o);
  }

  // Stops the run right after step `at` (as SIGTERM would: the flag is set during that step).
  TrainingResult RunUntil(const JobSpec& spec, const std::string& out, int64_t at, Recorder* recorder) {
    std::atomic<bool> stop{false};
    TrainerOptions o;
    o.out_dir = out;
    o.progress_interval_seconds = 0;
    o.stop_requested = &stop;
    o.on_event = [&](const TrainingEvent& e) {
      (*recorder)(e);
      if (e.kind == EventKind::kProgress && e.step == at) stop = true;
    };
    return RunTraining(spec, o);
  }

  std::string dir_;
};

TEST_F(TrainerTest, ResumeAfterStopContinuesBitForBit) {
  const JobSpec spec = Spec();
  Recorder whole;
  const TrainingResult a = Run(spec, dir_ + "/a", &whole);
  ASSERT_EQ(a.outcome, TrainingOutcome::kFinished);
  ASSERT_EQ(whole.losses.size(), 8u);
  EXPECT_EQ(whole.Count(EventKind::kEval), 2);  // at step 4 and the final one

  Recorder first, second;
  const TrainingResult stopped = RunUntil(spec, dir_ + "/b", 5, &first);
  EXPECT_EQ(stopped.outcome, TrainingOutcome::kStopped);
  EXPECT_EQ(stopped.steps, 5);
  EXPECT_EQ(first.Count(EventKind::kStopped), 1);
  EXPECT_TRUE(fs::exists(stopped.checkpoint_path));
  const TrainingResult resumed = Run(spec, dir_ + "/b", &second);
  ASSERT_EQ(resumed.outcome, TrainingOutcome::kFinished);
  ASSERT_EQ(second.events.front().kind, EventKind::kStarted);
  EXPECT_EQ(second.events.front().resumed_from_step, 5);

  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  ASSERT_EQ(joined.size(), whole.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) EXPECT_EQ(joined[i], whole.losses[i]) << "step " << i + 1;
  // The final weights are identical too: the files match byte for byte.
  EXPECT_EQ(testing::ReadFileBytes(a.model_path), testing::ReadFileBytes(resumed.model_path));
}

TEST_F(TrainerTest, LoraWithSgdResumesBitForBitAndTrainsOnlyAdapters) {
  JobSpec spec = Spec();
  spec.tuning = TuningMode::kLora;
  spec.lora_rank = 4;
  spec.lora_alpha = 8;
  spec.lora_targets = {"wq", "wv", "w2"};
  spec.optimizer = OptimizerKind::kSgd;
  spec.momentum = 0.9;
  spec.lr = 0.05;
  spec.schedule = LrScheduleKind::kConstant;
  spec.steps = 6;
  Recorder whole, first, second;
  const TrainingResult a = Run(spec, dir_ + "/a", &whole);
  RunUntil(spec, dir_ + "/b", 2, &first);
  const TrainingResult b = Run(spec, dir_ + "/b", &second);
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  ASSERT_EQ(joined.size(), whole.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) EXPECT_EQ(joined[i], whole.losses[i]) << "step " << i + 1;
  EXPECT_EQ(testing::ReadFileBytes(a.adapter_path), testing::ReadFileBytes(b.adapter_path));

  // Only the adapters moved: the base with the trained adapters loaded has the original base
  // weights, and the adapters on the targeted projections are no longer zero.
  PerformerLM base = LoadModelFile(spec.base_model);
  PerformerLM adapted = LoadModelFile(spec.base_model);
  LoadLoraAdapter(a.adapter_path, *adapted);
  EXPECT_EQ(adapted->lora_targets(), spec.lora_targets);
  const auto base_params = base->named_parameters();
  for (const auto& p : adapted->named_parameters()) {
    if (p.key().find(".lora_") == std::string::npos) {
      EXPECT_TRUE(at::equal(p.value(), base_params[p.key()])) << p.key();
    } else if (p.key().find(".lora_b") != std::string::npos) {
      EXPECT_GT(p.value().abs().max().item<double>(), 0.0) << p.key();
    }
  }

  // The merged model computes what base + adapters compute.
  PerformerLM merged = LoadModelFile(a.model_path);
  const at::Tensor tokens = testing::RandomBatch(2, 64, 256, 3).tokens;
  at::NoGradGuard no_grad;
  EXPECT_LT(testing::RelErr(merged->Forward(tokens), adapted->Forward(tokens)), 1e-5);
  EXPECT_GT(testing::RelErr(base->Forward(tokens), adapted->Forward(tokens)), 1e-4);
}

TEST_F(TrainerTest, DamagedNewestCheckpointIsReportedAndAnOlderOneUsed) {
  JobSpec spec = Spec();
  spec.checkpoint_every = 1;
  spec.checkpoints_kept = 2;
  Recorder whole, first, second;
  Run(spec, dir_ + "/a", &whole);
  RunUntil(spec, dir_ + "/b", 5, &first);
  std::vector<std::string> checkpoints = ListCheckpoints(dir_ + "/b");
  ASSERT_EQ(checkpoints.size(), 2u);  // steps 5 and 4; older ones were deleted
  EXPECT_NE(checkpoints[0].find("step-00000005"), std::string::npos);
  // Flip one byte in the middle of the newest checkpoint.
  std::string bytes = testing::ReadFileBytes(checkpoints[0]);
  bytes[bytes.size() / 2] ^= 0x01;
  testing::WriteFileBytes(checkpoints[0], bytes);

  Run(spec, dir_ + "/b", &second);
  ASSERT_GE(second.events.size(), 2u);
  EXPECT_EQ(second.events[0].kind, EventKind::kWarning);
  EXPECT_NE(second.events[0].message.find("step-00000005"), std::string::npos) << second.events[0].message;
  EXPECT_NE(second.events[0].message.find("checksum"), std::string::npos) << second.events[0].message;
  EXPECT_EQ(second.events[1].resumed_from_step, 4);
  // Steps 5..8 are recomputed from step 4 and match the uninterrupted run.
  ASSERT_EQ(second.losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(second.losses[i], whole.losses[4 + i]);
}

TEST_F(TrainerTest, OnlyDamagedCheckpointsStopTheRun) {
  JobSpec spec = Spec();
  Recorder first, second;
  RunUntil(spec, dir_ + "/b", 3, &first);
  const std::vector<std::string> checkpoints = ListCheckpoints(dir_ + "/b");
  ASSERT_EQ(checkpoints.size(), 1u);
  const std::string bytes = testing::ReadFileBytes(checkpoints[0]);
  testing::WriteFileBytes(checkpoints[0], bytes.substr(0, bytes.size() - 100));  // truncated
  try {
    Run(spec, dir_ + "/b", &second);
    FAIL() << "resumed from a truncated checkpoint";
  } catch (const EngineError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("no intact checkpoint"), std::string::npos) << e.what();
  }
  EXPECT_EQ(second.Count(EventKind::kWarning), 1);
  EXPECT_EQ(second.Count(EventKind::kStarted), 0);
}

TEST_F(TrainerTest, CheckpointOfADifferentSpecIsRefused) {
  JobSpec spec = Spec();
  Recorder first, second;
  RunUntil(spec, dir_ + "/b", 2, &first);
  spec.lr = 1e-3;
  try {
    Run(spec, dir_ + "/b", &second);
    FAIL() << "resumed with a different learning rate";
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("different model, data or training spec"), std::string::npos) << e.what();
  }
  // A different chunk size is allowed: the math is the same.
  spec.lr = Spec().lr;
  spec.chunk_size = 48;
  EXPECT_EQ(Run(spec, dir_ + "/b", &second).outcome, TrainingOutcome::kFinished);
}

TEST_F(TrainerTest, BadDataIsRefusedBeforeTheFirstStep) {
  struct Case {
    std::string file, contents;
    DataFormat format;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"empty.txt", "", DataFormat::kText, "empty.txt: empty file"},
      {"short.txt", "too short", DataFormat::kText, "fewer than one sequence"},
      {"bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n", DataFormat::kJsonl, "bad.jsonl:2:"},
      {"ids.u16", std::string("\x01\x00\x00\x01", 4), DataFormat::kIdsU16, "byte offset 2"},
  };
  for (const Case& c : cases) {
    testing::WriteFileBytes(dir_ + "/" + c.file, c.contents);
    JobSpec spec = Spec();
    spec.train_data[0].path = dir_ + "/" + c.file;
    spec.train_data[0].format = c.format;
    Recorder recorder;
    try {
      Run(spec, dir_ + "/out", &recorder);
      FAIL() << c.file << " was accepted";
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << c.file;
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos) << e.what();
    }
    EXPECT_TRUE(recorder.events.empty()) << c.file;
  }
}

// Shrink-to-fit inside a running job: a smaller quota requested mid-run takes effect at the
// next step boundary with a smaller chunk size; the losses stay those of the unchanged run up to
// float rounding (SLiM's gradients do not depend on the chunk size).
TEST_F(TrainerTest, RequestedQuotaReplansTheChunkSizeMidRun) {
  JobSpec spec = Spec();
  spec.seq_len = 256;
  spec.batch_size = 1;
  spec.grad_accum = 1;
  spec.eval_every = 0;
  spec.steps = 6;
  spec.chunk_size = 0;  // auto
  const std::string cache = dir_ + "/calibration";
  const ModelConfig config = LoadModelFile(spec.base_model)->config();
  const StepShape shape = JobStepShape(spec, config);
  CalibrationOptions calibration;
  calibration.cache_dir = cache;
  const MemoryCoefficients k = Calibrate(shape, "cpu", calibration);
  // Quotas that plan C = L and C = 2 attention blocks, with the planner's 5% margin.
  const auto quota_for = [&](int64_t chunk) {
    return static_cast<int64_t>(PredictPeak(shape, chunk, StartStateMode::kSubtract, k).total / 0.94);
  };
  spec.quota_bytes = quota_for(256);
  const int64_t small_quota = quota_for(2 * config.attention_block);

  Recorder unchanged;
  TrainerOptions o;
  o.out_dir = dir_ + "/a";
  o.progress_interval_seconds = 0;
  o.calibration_cache_dir = cache;
  o.on_event = [&](const TrainingEvent& e) { unchanged(e); };
  RunTraining(spec, o);

  Recorder shrunk;
  std::atomic<int64_t> requested{0};
  o.out_dir = dir_ + "/b";
  o.requested_quota_bytes = &requested;
  o.on_event = [&](const TrainingEvent& e) {
    shrunk(e);
    if (e.kind == EventKind::kProgress && e.step == 3) requested = small_quota;
  };
  RunTraining(spec, o);

  const TrainingEvent& started = shrunk.events.front();
  int replans = 0;
  for (const TrainingEvent& e : shrunk.events) {
    if (e.kind != EventKind::kReplanned) continue;
    ++replans;
    EXPECT_EQ(e.step, 3);
    EXPECT_EQ(e.quota_bytes, small_quota);
    EXPECT_LT(e.chunk_size, started.chunk_size);
    EXPECT_LE(e.predicted_peak_bytes, small_quota);
  }
  EXPECT_EQ(replans, 1);
  ASSERT_EQ(shrunk.losses.size(), unchanged.losses.size());
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(shrunk.losses[i], unchanged.losses[i]);
  for (size_t i = 3; i < shrunk.losses.size(); ++i) EXPECT_NEAR(shrunk.losses[i], unchanged.losses[i], 1e-4);
}

// A softmax model (an exact import) cannot run a fixed chunk below its sequence length: the
// plan refuses it, naming why and what to do, before any job starts.
TEST(Planning, SoftmaxModelsRefuseChunksBelowTheSequence) {
  JobSpec spec;
  spec.seq_len = 64;
  spec.batch_size = 1;
  spec.chunk_size = 16;
  ModelConfig model = testing::TinyConfig(FeatureMap::kSoftmax);
  for (int admission = 0; admission < 2; ++admission) {
    try {
      if (admission) {
        PlanAdmission(spec, model, "", false);
      } else {
        PlanTraining(spec, model, "");
      }
      FAIL() << "a softmax model was planned in slices";
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("memory.chunk_size: 16 is below training.seq_len 64, but this model's "
                                           "attention is softmax"),
                std::string::npos)
          << e.what();
    }
  }
  spec.chunk_size = 64;  // ordinary backprop: fine (no quota, nothing to calibrate)
  EXPECT_EQ(PlanTraining(spec, model, "").chunk_size, 64);
  model.feature_map = FeatureMap::kFavorPlus;  // a Performer slices as asked
  spec.chunk_size = 16;
  EXPECT_EQ(PlanTraining(spec, model, "").chunk_size, 16);
}

TEST(LearningRate, WarmupThenCosineToTheFloor) {
  JobSpec s;
  s.lr = 1.0;
  s.warmup_steps = 4;
  s.schedule = LrScheduleKind::kCosine;
  s.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(s, 0, 20), 0.25);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(s, 3, 20), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(s, 4, 20), 1.0);
  EXPECT_NEAR(ScheduledLearningRate(s, 19, 20), 0.1, 1e-12);
  const double mid = ScheduledLearningRate(s, 4 + 15 / 2, 20);
  EXPECT_GT(mid, 0.1);
  EXPECT_LT(mid, 1.0);
  s.schedule = LrScheduleKind::kConstant;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(s, 19, 20), 1.0);
}

}  // namespace
}  // namespace slim
