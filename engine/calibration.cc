#include "engine/calibration.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <vector>

#include "engine/devices.h"
#include "base/errors.h"
#include "engine/memory_tracker.h"
#include "engine/model.h"
#include "engine/runtime.h"
#include "engine/slim_step.h"

namespace slim {
namespace {

// Bump when the probe design or the model terms change: old cache entries become misses.
constexpr int kCalibrationVersion = 3;

using Probe = CalibrationProbe;

std::unique_ptr<torch::optim::Optimizer> MakeProbeOptimizer(OptimizerKind kind,
                                                            std::vector<at::Tensor> params) {
  if (kind == OptimizerKind::kSgd) {
    return std::make_unique<torch::optim::SGD>(std::move(params),
                                               torch::optim::SGDOptions(1e-4).momentum(0.9));
  }
  return std::make_unique<torch::optim::AdamW>(std::move(params), torch::optim::AdamWOptions(1e-4));
}

// Least-squares solution of rows · x ≈ y (rows: n × k).
std::vector<double> LeastSquares(const std::vector<std::vector<double>>& rows,
                                 const std::vector<double>& y) {
  const int64_t n = static_cast<int64_t>(rows.size()), k = static_cast<int64_t>(rows[0].size());
  at::Tensor a = at::empty({n, k}, at::kDouble), b = at::empty({n, 1}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) a[i][j] = rows[i][j];
    b[i][0] = y[i];
  }
  // Scale columns so that tokens (~1e4) and constants (~1) are equally well conditioned.
  const at::Tensor scale = a.abs().amax(0).clamp_min(1e-300);
  const at::Tensor x = std::get<0>(at::linalg_lstsq(a / scale, b)).squeeze(1) / scale;
  std::vector<double> out(k);
  for (int64_t j = 0; j < k; ++j) out[j] = x[j].item<double>();
  return out;
}

std::string Hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool LoadCached(const std::string& path, const std::string& key, MemoryCoefficients* k) {
  std::ifstream in(path);
  if (!in) return false;
  std::string stored_key;
  if (!std::getline(in, stored_key) || stored_key != key) return false;
  MemoryCoefficients c;
  if (!(in >> c.activation_bytes_per_token >> c.workspace_bytes >> c.seconds_per_token_backward >>
        c.seconds_per_token_forward >> c.seconds_per_slice >> c.seconds_fixed)) {
    return false;  // truncated or corrupt: measure again
  }
  *k = c;
  return true;
}

void StoreCached(const std::string& path, const std::string& key, const MemoryCoefficients& c) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    out.precision(17);
    out << key << "\n"
        << c.activation_bytes_per_token << " " << c.workspace_bytes << " "
        << c.seconds_per_token_backward << " " << c.seconds_per_token_forward << " "
        << c.seconds_per_slice << " " << c.seconds_fixed << "\n";
    if (!out) return;  // a cache that cannot be written is only a slower next start
  }
  std::filesystem::rename(tmp, path);  // atomic: readers see the old file or the whole new one
}

}  // namespace

std::string DefaultCalibrationCacheDir() {
  std::string base;
  if (const char* dir = std::getenv("SLIM_CACHE_DIR"); dir && *dir) {
    base = dir;
  } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) {
    base = std::string(xdg) + "/slim";
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    base = std::string(home) + "/.cache/slim";
  } else {
    base = "/tmp/slim-cache";
  }
  return base + "/calibration";
}

std::string CalibrationKey(const StepShape& s, const std::string& device_kind) {
  const ModelConfig& m = s.model;
  std::ostringstream k;
  k << "v" << kCalibrationVersion << " device=" << device_kind << " vocab=" << m.vocab_size
    << " d_model=" << m.d_model << " layers=" << m.n_layers << " heads=" << m.n_heads
    << " d_ff=" << m.d_ff << " features=" << FeatureMapName(m.feature_map) << "/"
    << m.features_per_head() << " tie=" << m.tie_embeddings << " block=" << m.attention_block
    << " precision=" << PrecisionName(s.precision) << " optimizer=" << OptimizerName(s.optimizer)
    << " tuning=" << TuningModeName(s.tuning) << " batch=" << CalibrationProbeBatch(s.batch);
  if (s.tuning == TuningMode::kLora) k << "/" << s.lora_rank;
  // Architecture variants (keys of the original layout are unchanged, so their caches stay).
  const ModelConfig original;
  if (m.norm != original.norm || m.ffn != original.ffn) {
    k << " norm=" << NormKindName(m.norm) << " ffn=" << FfnKindName(m.ffn);
  }
  if (m.kv_heads() != m.n_heads) k << " kv_heads=" << m.kv_heads();
  if (m.qkv_bias || m.attn_out_bias) k << " biases=" << m.qkv_bias << m.attn_out_bias;
  if (m.positions != original.positions) k << " positions=" << PositionKindName(m.positions);
  return k.str();
}

MemoryCoefficients MeasureCalibration(const StepShape& shape, const std::string& device_name,
                                      const CalibrationOptions& options,
                                      std::vector<CalibrationProbe>* probes_out) {
  shape.Validate();
  const c10::Device device = ParseDevice(device_name);
  if (device.is_cpu()) InstallCpuMemoryTracker();
  const int64_t b = shape.model.attention_block;
  // Probes run at the job's batch up to kCalibrationMaxProbeBatch (memory_model.h): per-op
  // overheads of small models do not grow with batch, so batch-1 probes underestimated their
  // step time (tiny at batch 2 by 30–100%); beyond it the per-token fit is the same.
  StepShape probe_shape = CalibrationProbeShape(shape);
  const int64_t B = probe_shape.batch, Lp = probe_shape.seq_len;

  const int64_t baseline = CurrentMemoryBytes(device);
  PerformerLM model(probe_shape.model, /*init_seed=*/0);
  model->to(device);
  if (shape.tuning == TuningMode::kLora) model->EnableLora(shape.lora_rank, 2.0 * shape.lora_rank);
  std::vector<at::Tensor> trainable;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  auto optimizer = MakeProbeOptimizer(shape.optimizer, trainable);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const at::Tensor ids = at::randint(shape.model.vocab_size, {B, 2 * Lp + 1}, gen, at::kLong).to(device);

  auto step = [&](int64_t L, int64_t C) {
    optimizer->zero_grad();
    SlimStepOptions o;
    o.chunk_size = C;
    o.precision = shape.precision;
    SlimTrainingStep(*model, ids.narrow(1, 0, L), ids.narrow(1, 1, L), o);
    optimizer->step();
    if (device.is_cuda()) torch::cuda::synchronize(device.index());
  };
  step(Lp / 2, Lp / 2);  // one-time allocations: gradients, optimizer state, lazy inits

  // Softmax attention trains only whole sequences (C = L): its probes vary L instead.
  std::vector<Probe> probes = shape.model.feature_map == FeatureMap::kSoftmax
                                  ? std::vector<Probe>{{Lp / 4, Lp / 4}, {Lp / 2, Lp / 2}, {Lp, Lp}}
                                  : std::vector<Probe>{{Lp / 2, Lp / 2}, {Lp, Lp}, {Lp, 16 * b}, {Lp, 4 * b}, {Lp, b}};
  if (probes_out != nullptr) probes_out->clear();
  for (Probe& p : probes) {
    step(p.seq_len, p.chunk_size);  // allocations of this shape are made once
    ResetPeakMemory(device);
    p.seconds = 1e300;
    for (int i = 0; i < std::max(1, options.timed_steps); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      step(p.seq_len, p.chunk_size);
      p.seconds = std::min(p.seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    p.peak_bytes = PeakMemoryBytes(device) - baseline;
  }

  // Memory: what the analytic terms do not cover is a·C + b.
  MemoryCoefficients k;
  std::vector<std::vector<double>> rows;
  std::vector<double> rest;
  for (const Probe& p : probes) {
    probe_shape.seq_len = p.seq_len;
    rows.push_back({static_cast<double>(B * p.chunk_size), 1.0});
    rest.push_back(static_cast<double>(p.peak_bytes -
                                       PredictPeak(probe_shape, p.chunk_size, StartStateMode::kSubtract, k).total));
  }
  const std::vector<double> ab = LeastSquares(rows, rest);
  k.activation_bytes_per_token = std::max(ab[0], 0.0);
  double worst = -1e300;  // raise b so the fit bounds every probe from above
  for (size_t i = 0; i < probes.size(); ++i) {
    worst = std::max(worst, rest[i] - (k.activation_bytes_per_token * rows[i][0] + ab[1]));
  }
  k.workspace_bytes = std::max(ab[1] + std::max(worst, 0.0), 0.0);

  // Time: t ≈ t_b·L + t_f·(forward-sweep tokens) + t_s·slices + t_0.
  rows.clear();
  std::vector<double> seconds;
  for (const Probe& p : probes) {
    const int64_t slices = (p.seq_len + p.chunk_size - 1) / p.chunk_size;
    rows.push_back({static_cast<double>(B * p.seq_len), static_cast<double>(B * (slices - 1) * p.chunk_size),
                    static_cast<double>(slices), 1.0});
    seconds.push_back(p.seconds);
  }
  const std::vector<double> t = LeastSquares(rows, seconds);
  k.seconds_per_token_backward = t[0];
  k.seconds_per_token_forward = t[1];
  k.seconds_per_slice = t[2];
  k.seconds_fixed = t[3];
  if (probes_out != nullptr) *probes_out = probes;
  return k;
}

namespace {

std::string CachePath(const std::string& key, const CalibrationOptions& options) {
  return options.cache_dir.empty() ? "" : options.cache_dir + "/" + Hex(std::hash<std::string>{}(key)) + ".txt";
}

}  // namespace

std::optional<MemoryCoefficients> CachedCalibration(const StepShape& shape, const std::string& device,
                                                    const CalibrationOptions& options) {
  const std::string key = CalibrationKey(shape, DeviceKind(device));
  const std::string path = CachePath(key, options);
  MemoryCoefficients k;
  if (path.empty() || !LoadCached(path, key, &k)) return std::nullopt;
  return k;
}

MemoryCoefficients Calibrate(const StepShape& shape, const std::string& device,
                             const CalibrationOptions& options) {
  if (std::optional<MemoryCoefficients> cached = CachedCalibration(shape, device, options)) return *cached;
  const MemoryCoefficients k = MeasureCalibration(shape, device, options);
  const std::string key = CalibrationKey(shape, DeviceKind(device));
  if (const std::string path = CachePath(key, options); !path.empty()) StoreCached(path, key, k);
  return k;
}

}  // namespace slim
