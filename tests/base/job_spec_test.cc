// Job specs: a full YAML spec reads into the expected fields and round-trips through its JSON
// form; every malformed field is refused with its path; worker events round-trip exactly.
#include "base/job_spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "base/errors.h"
#include "base/worker_events.h"
#include "base/yaml.h"

namespace slim {
namespace {

constexpr char kFullSpec[] = R"(
model:
  base: models/base.safetensors
data:
  train:
    - corpus/a.txt
    - {path: corpus/b.jsonl, format: jsonl, text_field: body}
  validation: [corpus/val.txt]
  seed: 7
training:
  seq_len: 1024
  batch_size: 4
  grad_accum: 2
  epochs: 1.5
  grad_clip: 0.5
  precision: bf16
  tuning: lora
  lora: {rank: 16, alpha: 32, targets: [wq, wv]}
  optimizer: {name: adamw, lr: 1e-4, weight_decay: 0.01, beta2: 0.95}
  schedule: {name: cosine, warmup_steps: 10, min_lr_ratio: 0.05}
memory:
  device: cpu
  quota: 2GiB
  chunk_size: auto
  mode: boundaries
data_parallel: {workers: 3}
eval: {every: 50, max_sequences: 16}
checkpoint: {every: 100, keep: 3}
)";

JobSpec FromYaml(const std::string& yaml, const std::string& base_dir = "") {
  return JobSpecFromJson(ParseYaml(yaml), base_dir);
}

TEST(JobSpec, ReadsEveryField) {
  const JobSpec s = FromYaml(kFullSpec, "/jobs");
  EXPECT_EQ(s.base_model, "/jobs/models/base.safetensors");
  ASSERT_EQ(s.train_data.size(), 2u);
  EXPECT_EQ(s.train_data[0].path, "/jobs/corpus/a.txt");
  EXPECT_EQ(s.train_data[0].format, DataFormat::kText);
  EXPECT_EQ(s.train_data[1].format, DataFormat::kJsonl);
  EXPECT_EQ(s.train_data[1].text_field, "body");
  ASSERT_EQ(s.validation_data.size(), 1u);
  EXPECT_EQ(s.validation_fraction, 0.0);
  EXPECT_EQ(s.data_seed, 7u);
  EXPECT_EQ(s.seq_len, 1024);
  EXPECT_EQ(s.batch_size, 4);
  EXPECT_EQ(s.grad_accum, 2);
  EXPECT_EQ(s.epochs, 1.5);
  EXPECT_EQ(s.steps, 0);
  EXPECT_EQ(s.grad_clip, 0.5);
  EXPECT_EQ(s.precision, Precision::kBf16);
  EXPECT_EQ(s.tuning, TuningMode::kLora);
  EXPECT_EQ(s.lora_rank, 16);
  EXPECT_EQ(s.lora_alpha, 32);
  EXPECT_EQ(s.lora_targets, (std::vector<std::string>{"wq", "wv"}));
  EXPECT_EQ(s.optimizer, OptimizerKind::kAdamW);
  EXPECT_EQ(s.lr, 1e-4);
  EXPECT_EQ(s.beta2, 0.95);
  EXPECT_EQ(s.schedule, LrScheduleKind::kCosine);
  EXPECT_EQ(s.warmup_steps, 10);
  EXPECT_EQ(s.min_lr_ratio, 0.05);
  EXPECT_EQ(s.quota_bytes, int64_t{2} << 30);
  EXPECT_EQ(s.chunk_size, 0);
  ASSERT_TRUE(s.mode.has_value());
  EXPECT_EQ(*s.mode, StartStateMode::kBoundaries);
  EXPECT_EQ(s.workers, 3);
  EXPECT_EQ(s.eval_every, 50);
  EXPECT_EQ(s.eval_max_sequences, 16);
  EXPECT_EQ(s.checkpoint_every, 100);
  EXPECT_EQ(s.checkpoints_kept, 3);
}

TEST(JobSpec, JsonFormRoundTrips) {
  const JobSpec s = FromYaml(kFullSpec, "/jobs");
  const std::string json = SerializeJson(JobSpecToJson(s));
  const JobSpec back = JobSpecFromJson(ParseJson(json));
  EXPECT_EQ(SerializeJson(JobSpecToJson(back)), json);
  EXPECT_EQ(TrainingFingerprint(back), TrainingFingerprint(s));
}

// Default LoRA targets mean "every projection the model has", which depends on the model (w3 only
// with SwiGLU): the JSON form, which slimd hands its workers, leaves them out rather than listing
// w3 for a GELU model. The fingerprint still lists every name, as it did before, so checkpoints
// written then resume.
TEST(JobSpec, DefaultLoraTargetsStayDefaultInTheJsonForm) {
  const JobSpec s = FromYaml("model: {preset: tiny}\ndata: {train: a.txt}\n"
                             "training: {seq_len: 64, steps: 10, tuning: lora}\nmemory: {chunk_size: 32}\n");
  ASSERT_TRUE(s.lora_targets.empty());
  const Json json = JobSpecToJson(s);
  EXPECT_EQ(json.members.at("training").members.at("lora").members.count("targets"), 0u);
  EXPECT_TRUE(JobSpecFromJson(json).lora_targets.empty());
  JobSpec every = s;
  every.lora_targets = LoraTargetNames();
  EXPECT_EQ(TrainingFingerprint(s), TrainingFingerprint(every));
  JobSpec some = s;
  some.lora_targets = {"wq", "wv"};
  EXPECT_NE(TrainingFingerprint(s), TrainingFingerprint(some));
}

TEST(JobSpec, FingerprintIgnoresMemoryEvalAndCheckpointSettings) {
  const JobSpec s = FromYaml(kFullSpec);
  JobSpec t = s;
  t.chunk_size = 256;
  t.quota_bytes = 1;
  t.eval_every = 3;
  t.checkpoint_every = 7;
  t.workers = 1;  // the global batch, and so the math, is the same for any number of workers
  EXPECT_EQ(TrainingFingerprint(t), TrainingFingerprint(s));
  t.lr = 2e-4;
  EXPECT_NE(TrainingFingerprint(t), TrainingFingerprint(s));
}

TEST(JobSpec, MinimalSpecTakesDefaults) {
  const JobSpec s = FromYaml("model: {preset: tiny}\ndata: {train: a.txt}\n"
                             "training: {seq_len: 64, steps: 10}\nmemory: {chunk_size: 32}\n");
  EXPECT_EQ(s.preset, "tiny");
  EXPECT_EQ(s.validation_fraction, 0.1);
  EXPECT_EQ(s.optimizer, OptimizerKind::kAdamW);
  EXPECT_EQ(s.schedule, LrScheduleKind::kConstant);
  EXPECT_EQ(s.tuning, TuningMode::kFull);
  EXPECT_FALSE(s.mode.has_value());
  EXPECT_EQ(s.device, "cpu");
  EXPECT_EQ(s.workers, 1);
}

// Shares are contiguous, cover the batch exactly once and differ by at most one sequence.
// slimd reads the API's spec as protobuf's JSON mapping prints it: 64-bit integers are strings.
TEST(JobSpec, ReadsProto3JsonIntegersAsStrings) {
  const JobSpec s = JobSpecFromJson(ParseJson(
      R"({"model": {"preset": "tiny", "init_seed": "9007199254740993"}, "data": {"train": ["a.txt"], "seed": "-0"},)"
      R"( "training": {"seq_len": 64, "steps": 1}, "memory": {"chunk_size": 16}})"));
  EXPECT_EQ(s.init_seed, 9007199254740993u);  // 2^53 + 1: exact, as a double could not hold it
  EXPECT_EQ(s.data_seed, 0u);
  for (const char* bad : {R"("")", R"("12abc")", R"("1.5")", R"(" 3")", R"("99999999999999999999")"}) {
    const std::string doc = std::string(R"({"model": {"preset": "tiny", "init_seed": )") + bad +
                            R"(}, "data": {"train": ["a.txt"]}, "training": {"seq_len": 64, "steps": 1},)"
                            R"( "memory": {"chunk_size": 16}})";
    try {
      JobSpecFromJson(ParseJson(doc));
      ADD_FAILURE() << "accepted init_seed " << bad;
    } catch (const EngineError& e) {
      EXPECT_NE(std::string(e.what()).find("spec: model.init_seed: must be an integer"), std::string::npos) << e.what();
    }
  }
  try {
    JobSpecFromJson(ParseJson(R"({"model": {"preset": "tiny"}, "data": {"train": ["a.txt"], "seed": "-4"},)"
                              R"( "training": {"seq_len": 64, "steps": 1}, "memory": {"chunk_size": 16}})"));
    ADD_FAILURE() << "accepted a negative seed";
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("spec: data.seed: must be >= 0, got '-4'"), std::string::npos) << e.what();
  }
}

// Without a quota an automatic chunk size is refused, unless a policy will supply the quota.
TEST(JobSpec, QuotaMayComeFromAPolicyOnlyWhenTheReaderSaysSo) {
  const Json doc = ParseYaml("model: {preset: tiny}\ndata: {train: [a.txt]}\ntraining: {seq_len: 64, steps: 1}\n");
  try {
    JobSpecFromJson(doc);
    ADD_FAILURE() << "accepted a spec with neither quota nor chunk size";
  } catch (const EngineError& e) {
    EXPECT_NE(std::string(e.what()).find("spec: memory: chunk_size 'auto' needs a quota"), std::string::npos) << e.what();
  }
  SpecReading reading;
  reading.quota_from_policy = true;
  const JobSpec s = JobSpecFromJson(doc, "", reading);
  EXPECT_EQ(s.quota_bytes, 0);
  EXPECT_EQ(s.chunk_size, 0);
  EXPECT_THROW(s.Validate(), EngineError);  // a worker never runs without one
}

TEST(JobSpec, WorkerBatchSharesPartitionTheBatch) {
  for (int64_t batch = 1; batch <= 9; ++batch) {
    for (int64_t workers = 1; workers <= batch; ++workers) {
      int64_t next = 0, smallest = batch, largest = 0;
      for (int64_t rank = 0; rank < workers; ++rank) {
        const BatchShare share = WorkerBatchShare(batch, rank, workers);
        EXPECT_EQ(share.begin, next) << batch << "/" << workers;
        next = share.end;
        smallest = std::min(smallest, share.end - share.begin);
        largest = std::max(largest, share.end - share.begin);
      }
      EXPECT_EQ(next, batch);
      EXPECT_GE(smallest, 1);
      EXPECT_LE(largest - smallest, 1);
    }
  }
  EXPECT_EQ(WorkerBatchShare(4, 2, 3).begin, 2);  // 4 over 3: [0,1) [1,2) [2,4)
  EXPECT_EQ(WorkerBatchShare(4, 2, 3).end, 4);
  EXPECT_THROW(WorkerBatchShare(2, 0, 3), EngineError);
}

// Each malformed spec is refused with a message naming the field and the problem.
TEST(JobSpec, ErrorsNameTheField) {
  const std::string ok_model = "model: {preset: tiny}\n";
  const std::string ok_data = "data: {train: a.txt}\n";
  const std::string ok_memory = "memory: {chunk_size: 32}\n";
  const std::string ok_training = "training: {seq_len: 64, steps: 10}\n";
  struct Case {
    std::string yaml, expected;
  };
  const std::vector<Case> cases = {
      {"- a\n", "a job spec must be a mapping"},
      {ok_data + ok_training + ok_memory, "model: give exactly one of 'base'"},
      {"model: {preset: huge}\n" + ok_data + ok_training + ok_memory, "preset: unknown name 'huge'"},
      {ok_model + ok_training + ok_memory, "data.train: is required"},
      {ok_model + "data: {train: a.txt, format: csv}\n" + ok_training + ok_memory, "data.format: unknown value 'csv'"},
      {ok_model + "data: {train: [{format: text}]}\n" + ok_training + ok_memory, "data.train[0].path: is required"},
      {ok_model + "data: {train: a.txt, validation: b.txt, validation_fraction: 0.2}\n" + ok_training + ok_memory,
       "either validation sources or a validation fraction"},
      {ok_model + ok_data + "training: {steps: 10}\n" + ok_memory, "training.seq_len: is required"},
      {ok_model + ok_data + "training: {seq_len: 64}\n" + ok_memory, "exactly one of 'steps' and 'epochs'"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, epochs: 1}\n" + ok_memory, "exactly one of 'steps'"},
      {ok_model + ok_data + "training: {seq_len: 64.5, steps: 10}\n" + ok_memory, "training.seq_len: must be an integer"},
      {ok_model + ok_data + "training: {seq_len: 0, steps: 10}\n" + ok_memory, "training.seq_len: must be >= 1"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, optimizer: {lr: -1}}\n" + ok_memory,
       "training.optimizer.lr: must be > 0"},
      // Limits (docs/job-spec.md): values no machine trains are refused by name, as are
      // non-finite numbers (YAML's .nan and .inf).
      {ok_model + ok_data + "training: {seq_len: 64, batch_size: 2147483647, steps: 10}\n" + ok_memory,
       "training.batch_size: must be <= 65536"},
      {ok_model + ok_data + "training: {seq_len: 64, grad_accum: 2147483647, steps: 10}\n" + ok_memory,
       "training.grad_accum: must be <= 65536"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 2147483647}\n" + ok_memory,
       "training.steps: must be <= 1000000000"},
      {ok_model + ok_data + "training: {seq_len: 64, epochs: 1e300}\n" + ok_memory, "training.epochs: must be <= 1e+06"},
      {ok_model + ok_data + "training: {seq_len: 8388608, steps: 1}\n" + ok_memory, "training.seq_len: must be <= 4194304"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, optimizer: {lr: 1e308}}\n" + ok_memory,
       "training.optimizer.lr: must be <= 10"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, optimizer: {lr: .nan}}\n" + ok_memory,
       "training.optimizer.lr: must be a finite number, got nan"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, grad_clip: .inf}\n" + ok_memory,
       "training.grad_clip: must be a finite number, got inf"},
      {ok_model + ok_data + "training: {seq_len: .inf, steps: 10}\n" + ok_memory, "training.seq_len: must be an integer, got inf"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10}\nmemory: {quota: \"96MiB x\"}\n",
       "memory.quota: unknown unit"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, optimizer: {name: adam}}\n" + ok_memory,
       "training.optimizer.name: unknown value 'adam' (allowed: adamw, sgd)"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, optimiser: {}}\n" + ok_memory,
       "training.optimiser: unknown field"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, lora: {rank: 4}}\n" + ok_memory,
       "training.lora: is only used with tuning: lora"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, tuning: lora, lora: {targets: [wz]}}\n" + ok_memory,
       "unknown projection 'wz'"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, schedule: {warmup_steps: 11}}\n" + ok_memory,
       "warmup_steps: 11 is more than the 10 training steps"},
      {ok_model + ok_data + ok_training, "chunk_size 'auto' needs a quota"},
      {ok_model + ok_data + ok_training + "memory: {quota: 2XB}\n", "memory.quota: unknown unit 'XB'"},
      // Beyond int64 the conversion was undefined behaviour (found by job_spec_fuzz with UBSan).
      {ok_model + ok_data + ok_training + "memory: {quota: 1e300}\n", "memory.quota: is too large, got 1.0000000000000001e+300"},
      {ok_model + ok_data + ok_training + "memory: {chunk_size: 32, mode: sideways}\n", "memory.mode: unknown value"},
      {ok_model + ok_data + ok_training + ok_memory + "eval: {every: -1}\n", "eval.every: must be >= 0"},
      {ok_model + ok_data + ok_training + ok_memory + "extra: 1\n", "extra: unknown field"},
      {ok_model + ok_data + ok_training + ok_memory + "data_parallel: {workers: 0}\n",
       "data_parallel.workers: must be >= 1, got 0"},
      {ok_model + ok_data + "training: {seq_len: 64, steps: 10, batch_size: 2}\n" + ok_memory +
           "data_parallel: {workers: 3}\n",
       "data_parallel.workers: 3 is more than training.batch_size 2"},
      {ok_model + ok_data + ok_training + ok_memory + "data_parallel: {gpus: 2}\n",
       "data_parallel.gpus: unknown field"},
  };
  for (const Case& c : cases) {
    try {
      FromYaml(c.yaml);
      ADD_FAILURE() << "accepted:\n" << c.yaml;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find(c.expected), std::string::npos)
          << "message: " << e.what() << "\nexpected: " << c.expected;
    }
  }
}

TEST(WorkerEvents, RoundTripExactly) {
  TrainingEvent e;
  e.kind = EventKind::kProgress;
  e.time = 1795896974.0292482;
  e.step = 12;
  e.total_steps = 100;
  e.loss = 2.0 / 3.0;
  e.lr = 3e-4;
  e.grad_norm = 0.1;
  e.tokens = 12 * 4096;
  e.tokens_per_second = 5123.25;
  e.eta_seconds = 88;
  e.peak_bytes = int64_t{3} << 30;
  e.blas_threads = 2;
  const std::string line = EventToJson(e);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const TrainingEvent back = EventFromJson(line);
  EXPECT_EQ(back.kind, EventKind::kProgress);
  EXPECT_EQ(back.time, e.time);
  EXPECT_EQ(back.loss, e.loss);  // bit for bit: 17 significant digits
  EXPECT_EQ(back.lr, e.lr);
  EXPECT_EQ(back.tokens, e.tokens);
  EXPECT_EQ(back.peak_bytes, e.peak_bytes);
  EXPECT_EQ(back.blas_threads, 2);
  EXPECT_EQ(EventToJson(back), line);

  TrainingEvent failed;
  failed.kind = EventKind::kFailed;
  failed.code = "resource_exhausted";
  failed.message = "out of memory: \"quota\" 1 GiB\n";
  const TrainingEvent f = EventFromJson(EventToJson(failed));
  EXPECT_EQ(f.kind, EventKind::kFailed);
  EXPECT_EQ(f.message, failed.message);

  TrainingEvent started;
  started.kind = EventKind::kStarted;
  started.rank = 1;
  started.world_size = 4;
  const TrainingEvent st = EventFromJson(EventToJson(started));
  EXPECT_EQ(st.rank, 1);
  EXPECT_EQ(st.world_size, 4);

  EXPECT_THROW(EventFromJson("{\"event\":\"exploded\"}"), EngineError);
  EXPECT_THROW(EventFromJson("not json"), EngineError);
}

// Counts and sizes in an event line must be integers in the int64 range: converting any other
// double is undefined behaviour (found by worker_event_fuzz with UBSan), and slimd reads these
// lines from worker processes.
TEST(WorkerEvents, CountsMustBeInt64Integers) {
  for (const char* line : {R"({"event":"progress","step":1e300})", R"({"event":"progress","step":1.5})",
                           R"({"event":"started","quota_bytes":-1e19})",
                           R"({"event":"progress","tokens":9223372036854775808})"}) {
    try {
      EventFromJson(line);
      ADD_FAILURE() << "accepted " << line;
    } catch (const EngineError& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("is not an integer in the int64 range"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(EventFromJson(R"({"event":"progress","peak_bytes":-9223372036854775808})").peak_bytes, INT64_MIN);
  EXPECT_EQ(EventFromJson(R"({"event":"progress","tokens":9007199254740993})").tokens, int64_t{9007199254740992});
}

TEST(WorkerControl, CommandsRoundTripAndBadOnesNameWhatIsWrong) {
  ControlCommand quota;
  quota.kind = ControlCommand::Kind::kSetQuota;
  quota.quota_bytes = int64_t{3} << 30;
  EXPECT_EQ(ControlToJson(quota), R"({"command":"set_quota","quota_bytes":3221225472})");
  const ControlCommand q = ControlFromJson(ControlToJson(quota));
  EXPECT_EQ(q.kind, ControlCommand::Kind::kSetQuota);
  EXPECT_EQ(q.quota_bytes, quota.quota_bytes);
  ControlCommand threads;
  threads.kind = ControlCommand::Kind::kSetThreads;
  threads.threads = 3;
  const ControlCommand t = ControlFromJson(ControlToJson(threads));
  EXPECT_EQ(t.kind, ControlCommand::Kind::kSetThreads);
  EXPECT_EQ(t.threads, 3);
  const std::pair<const char*, const char*> bad[] = {
      {"[1]", "not a JSON object"},
      {R"({"command":"reboot"})", "unknown control command 'reboot'"},
      {R"({"command":"set_quota"})", "quota_bytes must be > 0"},
      {R"({"command":"set_quota","quota_bytes":-5})", "quota_bytes must be > 0"},
      {R"({"command":"set_quota","quota_bytes":1.5})", "not an integer"},
      {R"({"command":"set_threads","threads":0})", "threads must be in [1, 4096]"},
      {R"({"command":"set_threads","threads":5000})", "threads must be in [1, 4096]"},
  };
  for (const auto& [line, why] : bad) {
    try {
      ControlFromJson(line);
      ADD_FAILURE() << "accepted " << line;
    } catch (const EngineError& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << line << ": " << e.what();
    }
  }
}

TEST(ErrorCodes, OneTableForNamesExitStatusesAndGrpcCodes) {
  for (const ErrorCodeInfo& info : kErrorCodes) {
    EXPECT_EQ(ErrorCodeFromName(info.name), info.code);
    EXPECT_EQ(ErrorCodeName(info.code), info.name);
  }
  EXPECT_EQ(ExitStatus(ErrorCode::kInvalidArgument), 2);
  EXPECT_EQ(ExitStatus(ErrorCode::kResourceExhausted), 3);
  EXPECT_EQ(ExitStatus(ErrorCode::kInternal), 1);
  EXPECT_EQ(GrpcCode(ErrorCode::kInvalidArgument), 3);    // INVALID_ARGUMENT
  EXPECT_EQ(GrpcCode(ErrorCode::kResourceExhausted), 8);  // RESOURCE_EXHAUSTED
  EXPECT_EQ(GrpcCode(ErrorCode::kInternal), 13);          // INTERNAL
  EXPECT_EQ(ErrorCodeFromName("something_new"), ErrorCode::kInternal);
}

}  // namespace
}  // namespace slim
