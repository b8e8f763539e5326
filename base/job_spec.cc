#include "base/job_spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <utility>
#include <sstream>

#include "base/byte_size.h"
#include "base/errors.h"

namespace slim {
namespace {

[[noreturn]] void Bad(const std::string& field, const std::string& what) {
  throw EngineError(ErrorCode::kInvalidArgument, "spec: " + field + ": " + what);
}

// One mapping of the spec, read field by field. Remembers which keys were read so that
// Finish() can refuse the ones nobody asked for.
class Section {
 public:
  Section(const Json& value, std::string path) : path_(std::move(path)) {
    if (value.kind == Json::kNull) return;  // an empty section: every field takes its default
    if (value.kind != Json::kObject) Bad(Name(), "must be a mapping, got " + DescribeJson(value));
    members_ = &value.members;
  }

  std::string Field(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  const Json* Find(const std::string& key) {
    read_.insert(key);
    if (members_ == nullptr) return nullptr;
    const auto it = members_->find(key);
    return it == members_->end() || it->second.kind == Json::kNull ? nullptr : &it->second;
  }
  // The member `key`, or a null value (which reads as an empty section) when it is absent.
  // A reference, so that a Section made from it may keep pointing into the document.
  const Json& Child(const std::string& key) {
    static const Json kNull;
    const Json* v = Find(key);
    return v == nullptr ? kNull : *v;
  }
  bool Has(const std::string& key) {
    return Find(key) != nullptr;
  }

  std::string String(const std::string& key, const std::string& default_value) {
    const Json* v = Find(key);
    if (v == nullptr) return default_value;
    if (v->kind != Json::kString) Bad(Field(key), "must be a string, got " + DescribeJson(*v));
    if (v->text.empty()) Bad(Field(key), "must not be empty");
    return v->text;
  }
  // A finite number in [min, max] (or (min, max] when min_exclusive).
  double Number(const std::string& key, double default_value, double min, bool min_exclusive = false,
                double max = std::numeric_limits<double>::max()) {
    const Json* v = Find(key);
    if (v == nullptr) return default_value;
    if (v->kind != Json::kNumber) Bad(Field(key), "must be a number, got " + DescribeJson(*v));
    if (!std::isfinite(v->number)) Bad(Field(key), "must be a finite number, got " + DescribeJson(*v));
    std::ostringstream msg;
    if (v->number < min || (min_exclusive && v->number == min)) {
      msg << "must be " << (min_exclusive ? "> " : ">= ") << min << ", got " << DescribeJson(*v);
      Bad(Field(key), msg.str());
    }
    if (v->number > max) {
      msg << "must be <= " << max << " (docs/job-spec.md, \"Limits\"), got " << DescribeJson(*v);
      Bad(Field(key), msg.str());
    }
    return v->number;
  }
  // An integer in [min, max]: a JSON number, or a decimal string.
  int64_t Int(const std::string& key, int64_t default_value, int64_t min,
              int64_t max = std::numeric_limits<int64_t>::max()) {
    const Json* v = Find(key);
    if (v == nullptr) return default_value;
    int64_t value = 0;
    if (v->kind == Json::kString) {  // proto3 JSON's form of int64: "-12", exact to 2^63
      const char* end = v->text.data() + v->text.size();
      const auto [last, error] = std::from_chars(v->text.data(), end, value);
      if (v->text.empty() || error != std::errc() || last != end) {
        Bad(Field(key), "must be an integer, got " + DescribeJson(*v));
      }
    } else if (v->kind != Json::kNumber || !std::isfinite(v->number) || v->number != std::floor(v->number) ||
               std::fabs(v->number) > 9e15) {
      Bad(Field(key), "must be an integer, got " + DescribeJson(*v));
    } else {
      value = static_cast<int64_t>(v->number);
    }
    if (value < min) Bad(Field(key), "must be >= " + std::to_string(min) + ", got " + DescribeJson(*v));
    if (value > max) {
      Bad(Field(key), "must be <= " + std::to_string(max) + " (docs/job-spec.md, \"Limits\"), got " + DescribeJson(*v));
    }
    return value;
  }
  // A size: a number of bytes, or a string with units ("2GiB").
  int64_t Bytes(const std::string& key) {
    const Json* v = Find(key);
    if (v == nullptr) return 0;
    if (v->kind == Json::kString) return ParseBytes(v->text, "spec: " + Field(key));
    if (v->kind == Json::kNumber && v->number >= 0 && v->number == std::floor(v->number)) {
      // The bound ParseBytes applies to sizes with units; beyond int64 the cast is undefined.
      if (v->number > 9.2e18) Bad(Field(key), "is too large, got " + DescribeJson(*v));
      return static_cast<int64_t>(v->number);
    }
    Bad(Field(key), "must be a size such as 2GiB or a number of bytes, got " + DescribeJson(*v));
  }
  std::vector<std::string> StringList(const std::string& key) {
    const Json* v = Find(key);
    std::vector<std::string> out;
    if (v == nullptr) return out;
    if (v->kind != Json::kArray) Bad(Field(key), "must be a list, got " + DescribeJson(*v));
    for (size_t i = 0; i < v->items.size(); ++i) {
      if (v->items[i].kind != Json::kString) {
        Bad(Field(key) + "[" + std::to_string(i) + "]", "must be a string, got " + DescribeJson(v->items[i]));
      }
      out.push_back(v->items[i].text);
    }
    return out;
  }
  // Refuses keys that no getter asked for.
  void Finish() const {
    if (members_ == nullptr) return;
    for (const auto& [key, value] : *members_) {
      if (!read_.count(key)) {
        std::string known;
        for (const auto& k : read_) known += (known.empty() ? "" : ", ") + k;
        Bad(Field(key), "unknown field (known here: " + known + ")");
      }
    }
  }
  std::string Name() const { return path_.empty() ? "(top level)" : path_; }

 private:
  std::string path_;
  const std::map<std::string, Json>* members_ = nullptr;
  std::set<std::string> read_;
};

std::string Resolve(const std::string& path, const std::string& base_dir) {
  if (base_dir.empty() || path.empty() || path[0] == '/') return path;
  return base_dir + "/" + path;
}

// A data source: a path string, or {path, format, text_field}. The vocabulary is the model's.
DataSource ReadSource(const Json& v, const std::string& field, const DataSource& defaults,
                      const std::string& base_dir) {
  DataSource s = defaults;
  if (v.kind == Json::kString) {
    if (v.text.empty()) Bad(field, "must not be empty");
    s.path = Resolve(v.text, base_dir);
    return s;
  }
  Section section(v, field);
  s.path = Resolve(section.String("path", ""), base_dir);
  if (s.path.empty()) Bad(field + ".path", "is required");
  if (section.Has("format")) s.format = ParseDataFormat(section.String("format", ""), "spec: " + field + ".format");
  s.text_field = section.String("text_field", s.text_field);
  section.Finish();
  return s;
}

std::vector<DataSource> ReadSources(Section& section, const std::string& key, const DataSource& defaults,
                                    const std::string& base_dir) {
  const Json* v = section.Find(key);
  std::vector<DataSource> out;
  if (v == nullptr) return out;
  if (v->kind == Json::kArray) {
    if (v->items.empty()) Bad(section.Field(key), "must not be an empty list");
    for (size_t i = 0; i < v->items.size(); ++i) {
      out.push_back(ReadSource(v->items[i], section.Field(key) + "[" + std::to_string(i) + "]", defaults, base_dir));
    }
  } else {
    out.push_back(ReadSource(*v, section.Field(key), defaults, base_dir));
  }
  return out;
}

template <typename Parse>
auto Enum(Section& section, const std::string& key, decltype(std::declval<Parse>()("", "")) default_value,
          Parse parse) {
  const std::string name = section.String(key, "");
  return name.empty() ? default_value : parse(name, "spec: " + section.Field(key));
}

LrScheduleKind ParseSchedule(const std::string& name, const std::string& field) {
  if (name == "constant") return LrScheduleKind::kConstant;
  if (name == "cosine") return LrScheduleKind::kCosine;
  throw EngineError(ErrorCode::kInvalidArgument, field + ": unknown value '" + name + "' (allowed: constant, cosine)");
}

Json SourcesJson(const std::vector<DataSource>& sources) {
  Json list = JsonArray();
  for (const DataSource& s : sources) {
    Json o = JsonObject();
    o.members["path"] = JsonString(s.path);
    o.members["format"] = JsonString(DataFormatName(s.format));
    o.members["text_field"] = JsonString(s.text_field);
    list.items.push_back(o);
  }
  return list;
}

Json StringArray(const std::vector<std::string>& items) {
  Json list = JsonArray();
  for (const std::string& item : items) list.items.push_back(JsonString(item));
  return list;
}

}  // namespace

std::string LrScheduleName(LrScheduleKind k) { return k == LrScheduleKind::kCosine ? "cosine" : "constant"; }

const std::vector<std::string>& LoraTargetNames() {
  static const std::vector<std::string> kNames = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  return kNames;
}

JobSpec JobSpecFromJson(const Json& doc, const std::string& base_dir, const SpecReading& reading) {
  JobSpec s;
  if (doc.kind != Json::kObject) Bad("(top level)", "a job spec must be a mapping, got " + DescribeJson(doc));
  Section top(doc, "");

  Section model(top.Child("model"), "model");
  s.base_model = Resolve(model.String("base", ""), base_dir);
  s.preset = model.String("preset", "");
  if (s.base_model.empty() == s.preset.empty()) Bad("model", "give exactly one of 'base' (a model file) and 'preset'");
  if (!s.preset.empty()) PresetConfig(s.preset);  // validates the name
  s.init_seed = static_cast<uint64_t>(model.Int("init_seed", 0, 0));
  model.Finish();

  Section data(top.Child("data"), "data");
  DataSource defaults;
  if (data.Has("format")) defaults.format = ParseDataFormat(data.String("format", ""), "spec: data.format");
  defaults.text_field = data.String("text_field", defaults.text_field);
  s.train_data = ReadSources(data, "train", defaults, base_dir);
  if (s.train_data.empty()) Bad("data.train", "is required (a path, or a list of paths or {path, format})");
  s.validation_data = ReadSources(data, "validation", defaults, base_dir);
  s.validation_fraction = data.Number("validation_fraction", s.validation_data.empty() ? 0.1 : 0.0, 0);
  if (s.validation_fraction >= 1) Bad("data.validation_fraction", "must be < 1");
  if (!s.validation_data.empty() && s.validation_fraction > 0) {
    Bad("data.validation_fraction", "give either validation sources or a validation fraction, not both");
  }
  s.data_seed = static_cast<uint64_t>(data.Int("seed", 0, 0));
  data.Finish();

  Section training(top.Child("training"), "training");
  s.seq_len = training.Int("seq_len", 0, 1, SpecLimits::kMaxSeqLen);
  if (s.seq_len == 0) Bad("training.seq_len", "is required");
  s.batch_size = training.Int("batch_size", 1, 1, SpecLimits::kMaxBatchSize);
  s.grad_accum = training.Int("grad_accum", 1, 1, SpecLimits::kMaxGradAccum);
  s.steps = training.Int("steps", 0, 1, SpecLimits::kMaxSteps);
  s.epochs = training.Number("epochs", 0, 0, /*min_exclusive=*/true, SpecLimits::kMaxEpochs);
  s.grad_clip = training.Number("grad_clip", 1.0, 0, false, SpecLimits::kMaxGradClip);
  s.precision = Enum(training, "precision", Precision::kFp32, ParsePrecision);
  s.tuning = Enum(training, "tuning", TuningMode::kFull, ParseTuningMode);
  {
    Section opt(training.Child("optimizer"), "training.optimizer");
    s.optimizer = Enum(opt, "name", OptimizerKind::kAdamW, ParseOptimizer);
    s.lr = opt.Number("lr", s.lr, 0, /*min_exclusive=*/true, SpecLimits::kMaxLr);
    s.weight_decay = opt.Number("weight_decay", 0.0, 0, false, SpecLimits::kMaxWeightDecay);
    if (s.optimizer == OptimizerKind::kAdamW) {
      s.beta1 = opt.Number("beta1", s.beta1, 0);
      s.beta2 = opt.Number("beta2", s.beta2, 0);
      s.eps = opt.Number("eps", s.eps, 0, /*min_exclusive=*/true, 1.0);
      if (s.beta1 >= 1) Bad(opt.Field("beta1"), "must be < 1");
      if (s.beta2 >= 1) Bad(opt.Field("beta2"), "must be < 1");
    } else {
      s.momentum = opt.Number("momentum", 0.0, 0);
      if (s.momentum >= 1) Bad(opt.Field("momentum"), "must be < 1");
    }
    opt.Finish();
  }
  {
    Section sched(training.Child("schedule"), "training.schedule");
    s.schedule = Enum(sched, "name", LrScheduleKind::kConstant, ParseSchedule);
    s.warmup_steps = sched.Int("warmup_steps", 0, 0, SpecLimits::kMaxSteps);
    if (s.schedule == LrScheduleKind::kCosine) {
      s.min_lr_ratio = sched.Number("min_lr_ratio", s.min_lr_ratio, 0);
      if (s.min_lr_ratio > 1) Bad(sched.Field("min_lr_ratio"), "must be <= 1");
    }
    sched.Finish();
  }
  {
    const Json* lora_value = training.Find("lora");
    if (lora_value != nullptr && s.tuning != TuningMode::kLora) {
      Bad("training.lora", "is only used with tuning: lora");
    }
    Section lora(training.Child("lora"), "training.lora");
    s.lora_rank = lora.Int("rank", s.lora_rank, 1, SpecLimits::kMaxLoraRank);
    s.lora_alpha = lora.Number("alpha", s.lora_alpha, 0, /*min_exclusive=*/true, SpecLimits::kMaxLoraAlpha);
    s.lora_targets = lora.StringList("targets");
    if (lora.Has("targets") && s.lora_targets.empty()) Bad("training.lora.targets", "must not be empty");
    for (const std::string& t : s.lora_targets) {
      const auto& names = LoraTargetNames();
      if (std::find(names.begin(), names.end(), t) == names.end()) {
        Bad("training.lora.targets", "unknown projection '" + t + "' (allowed: wq, wk, wv, wo, w1, w2, and w3 for SwiGLU models)");
      }
      if (std::count(s.lora_targets.begin(), s.lora_targets.end(), t) > 1) {
        Bad("training.lora.targets", "'" + t + "' is listed twice");
      }
    }
    lora.Finish();
  }
  training.Finish();

  Section memory(top.Child("memory"), "memory");
  s.device = memory.String("device", s.device);
  s.quota_bytes = memory.Bytes("quota");
  if (const Json* c = memory.Find("chunk_size"); c != nullptr && !(c->kind == Json::kString && c->text == "auto")) {
    s.chunk_size = memory.Int("chunk_size", 0, 1, SpecLimits::kMaxSeqLen);
  }
  if (const std::string mode = memory.String("mode", "auto"); mode != "auto") {
    s.mode = ParseStartStateMode(mode, "spec: memory.mode");
  }
  memory.Finish();

  Section parallel(top.Child("data_parallel"), "data_parallel");
  s.workers = parallel.Int("workers", 1, 1, SpecLimits::kMaxWorkers);
  parallel.Finish();

  Section eval(top.Child("eval"), "eval");
  s.eval_every = eval.Int("every", 0, 0, SpecLimits::kMaxSteps);
  s.eval_max_sequences = eval.Int("max_sequences", 0, 0, SpecLimits::kMaxSteps);
  eval.Finish();

  Section checkpoint(top.Child("checkpoint"), "checkpoint");
  s.checkpoint_every = checkpoint.Int("every", 0, 0, SpecLimits::kMaxSteps);
  s.checkpoints_kept = checkpoint.Int("keep", 2, 1, SpecLimits::kMaxCheckpointsKept);
  checkpoint.Finish();

  top.Finish();
  s.Validate(reading);
  return s;
}

void JobSpec::Validate(const SpecReading& reading) const {
  if ((steps > 0) == (epochs > 0)) Bad("training", "give exactly one of 'steps' and 'epochs'");
  if (chunk_size == 0 && quota_bytes == 0 && !reading.quota_from_policy) {
    Bad("memory", "chunk_size 'auto' needs a quota (memory.quota, e.g. 2GiB), or give memory.chunk_size");
  }
  if (warmup_steps > 0 && steps > 0 && warmup_steps > steps) {
    Bad("training.schedule.warmup_steps", std::to_string(warmup_steps) + " is more than the " +
                                               std::to_string(steps) + " training steps");
  }
  for (const DataSource& d : train_data) CheckArgument(!d.path.empty(), "spec: data.train: empty path");
  if (workers < 1) Bad("data_parallel.workers", "must be >= 1, got " + std::to_string(workers));
  if (workers > batch_size) {
    Bad("data_parallel.workers", std::to_string(workers) + " is more than training.batch_size " +
                                     std::to_string(batch_size) +
                                     ": every worker needs at least one sequence of each micro-batch");
  }
}

BatchShare WorkerBatchShare(int64_t batch_size, int64_t rank, int64_t workers) {
  CheckArgument(workers >= 1 && rank >= 0 && rank < workers && workers <= batch_size,
                "batch share: rank " + std::to_string(rank) + " of " + std::to_string(workers) +
                    " workers over a batch of " + std::to_string(batch_size));
  return {batch_size * rank / workers, batch_size * (rank + 1) / workers};
}

Json JobSpecToJson(const JobSpec& s) {
  Json doc = JsonObject();
  Json model = JsonObject();
  if (!s.base_model.empty()) model.members["base"] = JsonString(s.base_model);
  if (!s.preset.empty()) model.members["preset"] = JsonString(s.preset);
  model.members["init_seed"] = JsonNumber(static_cast<double>(s.init_seed));
  doc.members["model"] = model;

  Json data = JsonObject();
  data.members["train"] = SourcesJson(s.train_data);
  if (!s.validation_data.empty()) data.members["validation"] = SourcesJson(s.validation_data);
  data.members["validation_fraction"] = JsonNumber(s.validation_fraction);
  data.members["seed"] = JsonNumber(static_cast<double>(s.data_seed));
  doc.members["data"] = data;

  Json training = JsonObject();
  training.members["seq_len"] = JsonNumber(static_cast<double>(s.seq_len));
  training.members["batch_size"] = JsonNumber(static_cast<double>(s.batch_size));
  training.members["grad_accum"] = JsonNumber(static_cast<double>(s.grad_accum));
  if (s.steps > 0) training.members["steps"] = JsonNumber(static_cast<double>(s.steps));
  if (s.epochs > 0) training.members["epochs"] = JsonNumber(s.epochs);
  training.members["grad_clip"] = JsonNumber(s.grad_clip);
  training.members["precision"] = JsonString(PrecisionName(s.precision));
  training.members["tuning"] = JsonString(TuningModeName(s.tuning));
  Json opt = JsonObject();
  opt.members["name"] = JsonString(OptimizerName(s.optimizer));
  opt.members["lr"] = JsonNumber(s.lr);
  opt.members["weight_decay"] = JsonNumber(s.weight_decay);
  if (s.optimizer == OptimizerKind::kAdamW) {
    opt.members["beta1"] = JsonNumber(s.beta1);
    opt.members["beta2"] = JsonNumber(s.beta2);
    opt.members["eps"] = JsonNumber(s.eps);
  } else {
    opt.members["momentum"] = JsonNumber(s.momentum);
  }
  training.members["optimizer"] = opt;
  Json sched = JsonObject();
  sched.members["name"] = JsonString(LrScheduleName(s.schedule));
  sched.members["warmup_steps"] = JsonNumber(static_cast<double>(s.warmup_steps));
  if (s.schedule == LrScheduleKind::kCosine) sched.members["min_lr_ratio"] = JsonNumber(s.min_lr_ratio);
  training.members["schedule"] = sched;
  if (s.tuning == TuningMode::kLora) {
    Json lora = JsonObject();
    lora.members["rank"] = JsonNumber(static_cast<double>(s.lora_rank));
    lora.members["alpha"] = JsonNumber(s.lora_alpha);
    // No targets means every projection the model has: the list depends on the model (w3 only
    // with SwiGLU), so it is not spelt out here — a worker reading this JSON must not be handed
    // w3 for a GELU model.
    if (!s.lora_targets.empty()) lora.members["targets"] = StringArray(s.lora_targets);
    training.members["lora"] = lora;
  }
  doc.members["training"] = training;

  Json memory = JsonObject();
  memory.members["device"] = JsonString(s.device);
  if (s.quota_bytes > 0) memory.members["quota"] = JsonNumber(static_cast<double>(s.quota_bytes));
  memory.members["chunk_size"] = s.chunk_size > 0 ? JsonNumber(static_cast<double>(s.chunk_size)) : JsonString("auto");
  memory.members["mode"] = JsonString(s.mode ? StartStateModeName(*s.mode) : "auto");
  doc.members["memory"] = memory;

  Json parallel = JsonObject();
  parallel.members["workers"] = JsonNumber(static_cast<double>(s.workers));
  doc.members["data_parallel"] = parallel;

  Json eval = JsonObject();
  eval.members["every"] = JsonNumber(static_cast<double>(s.eval_every));
  eval.members["max_sequences"] = JsonNumber(static_cast<double>(s.eval_max_sequences));
  doc.members["eval"] = eval;
  Json checkpoint = JsonObject();
  checkpoint.members["every"] = JsonNumber(static_cast<double>(s.checkpoint_every));
  checkpoint.members["keep"] = JsonNumber(static_cast<double>(s.checkpoints_kept));
  doc.members["checkpoint"] = checkpoint;
  return doc;
}

std::string TrainingFingerprint(const JobSpec& spec) {
  Json doc = JobSpecToJson(spec);
  // Default LoRA targets as every name, as fingerprints before the JSON form left them out had
  // them: checkpoints written then still resume.
  if (spec.tuning == TuningMode::kLora && spec.lora_targets.empty()) {
    doc.members["training"].members["lora"].members["targets"] = StringArray(LoraTargetNames());
  }
  doc.members.erase("memory");
  doc.members.erase("data_parallel");  // the global batch is the same for any number of workers
  doc.members.erase("eval");
  doc.members.erase("checkpoint");
  return SerializeJson(doc);
}

}  // namespace slim
