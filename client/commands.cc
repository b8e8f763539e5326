#include "client/commands.h"

#include <unistd.h>

#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "absl/status/status.h"
#include "client/cli_support.h"
#include "client/dataset_upload.h"
#include "client/spec_file.h"
#include "base/byte_size.h"
#include "base/errors.h"
#include "base/json.h"
#include "base/sha256.h"

namespace slim::client {
namespace {

constexpr char kVersion[] = "0.5.0";

const std::string kConnectionHelp = R"(
connection (also SLIM_SERVER, SLIM_TOKEN, SLIM_TLS=1, SLIM_CA_CERT, or ~/.config/slim/slimctl.yaml):
  --server ADDR     slimd address (default 127.0.0.1:50051; unix:/path for a socket)
  --token T         bearer token          --tls / --ca-cert FILE   TLS
  --timeout S       deadline of each call in seconds (default 60; submit, plan and models
                    import 600, as they may first calibrate the planner for a new model)
  -o, --output F    table (default), wide (more columns), json, yaml, or name (ids, one
                    per line: submit, get, list, cancel, devices, datasets, models, jobs)
)";

bool Terminal() { return ::isatty(STDOUT_FILENO) != 0; }

std::string Bytes(int64_t b) { return b > 0 ? FormatBytes(b) : "-"; }

std::string ProgressText(const v1::Job& job) {
  const v1::JobProgress& p = job.progress();
  if (p.total_steps() == 0) return "-";
  return std::to_string(p.step()) + "/" + std::to_string(p.total_steps());
}

std::string Loss(double loss) {
  if (loss == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4f", loss);
  return buf;
}

bool IsTerminal(v1::JobState s) {
  return s == v1::JOB_STATE_SUCCEEDED || s == v1::JOB_STATE_FAILED || s == v1::JOB_STATE_CANCELLED;
}

int ExitForJob(v1::JobState s) {
  if (s == v1::JOB_STATE_FAILED) return kExitJobFailed;
  if (s == v1::JOB_STATE_CANCELLED) return kExitJobCancelled;
  return kExitOk;
}

// "cpu:0", or every device of a data-parallel job ("cpu:0,cpu:1"); "-" when it has none.
std::string DevicesText(const v1::Job& job) {
  if (job.devices_size() <= 1) return job.device().empty() ? "-" : job.device();
  std::string text;
  for (const std::string& device : job.devices()) text += (text.empty() ? "" : ",") + device;
  return text;
}

void PrintJob(const v1::Job& job, OutputFormat format) {
  if (format == OutputFormat::kName) {
    std::printf("%s\n", job.id().c_str());
    return;
  }
  if (IsDocument(format)) return PrintStructured(job, format);
  const v1::JobProgress& p = job.progress();
  std::vector<std::vector<std::string>> rows = {
      {"id:", job.id()},
      {"name:", job.display_name().empty() ? "-" : job.display_name()},
      {"state:", StateName(job.state()) + (job.queue_position() > 0 ? " (position " + std::to_string(job.queue_position()) + ")" : "")},
      {"priority:", std::to_string(job.priority())},
      {"device:", DevicesText(job)},
      {"quota:", Bytes(job.quota_bytes()) + (job.spec().data_parallel().workers() > 1 ? " per worker" : "") +
                     (job.requested_quota_bytes() > job.quota_bytes()
                          ? " (shrunk from " + Bytes(job.requested_quota_bytes()) + "; minimum "
                          : " (minimum ") +
                     Bytes(job.min_quota_bytes()) + ")"},
      {"chunk size:", std::to_string(job.chunk_size()) + " (" + job.mode() + ")"},
      {"peak memory:", "predicted " + Bytes(job.predicted_peak_bytes()) + ", observed " + Bytes(job.observed_peak_bytes())},
      {"progress:", ProgressText(job) + " steps, " + std::to_string(p.tokens()) + " tokens"},
      {"loss:", Loss(p.loss()) + " (validation " + Loss(p.eval_loss()) + ")"},
      {"speed:", p.tokens_per_second() > 0 ? std::to_string(static_cast<int64_t>(p.tokens_per_second())) + " tokens/s, ETA " + Duration(p.eta_seconds()) : "-"},
      {"created:", AbsoluteTime(job.create_time()) + " (" + Age(job.create_time()) + ")"},
      {"started:", AbsoluteTime(job.start_time())},
      {"ended:", AbsoluteTime(job.end_time())},
      {"attempts:", std::to_string(job.attempts())},
      {"output model:", job.output_model().empty() ? "-" : job.output_model()},
  };
  if (!job.replica().empty()) rows.insert(rows.begin() + 5, {"replica:", job.replica()});
  if (p.blas_threads() > 0) rows.push_back({"BLAS threads:", std::to_string(p.blas_threads())});
  if (!job.error().empty()) {
    // error_code is a google.rpc.Code, the numbering of absl::StatusCode.
    rows.push_back({"error:", absl::StatusCodeToString(static_cast<absl::StatusCode>(job.error_code())) + " (" +
                                  job.error() + ")"});
  }
  PrintTable(rows);
}

// Uploads a local file as a dataset, reusing an existing dataset with the same content.
std::string UploadFile(Client& client, const std::string& path, const std::string& name, const std::string& format,
                       bool show_progress, grpc::Status* status, v1::Dataset* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot read file");
  DatasetUpload upload{name, format, std::string((std::istreambuf_iterator<char>(in)), {})};
  if (upload.data.empty()) throw EngineError(ErrorCode::kInvalidArgument, path + ": empty file");
  const bool bar = show_progress && Terminal();
  bool drew = false;
  const auto progress = [&drew](size_t done, size_t total) {
    drew = true;
    const int width = 30, filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r[%s%s] %s / %s", std::string(filled, '#').c_str(), std::string(width - filled, '-').c_str(),
                 FormatBytes(static_cast<int64_t>(done)).c_str(), FormatBytes(static_cast<int64_t>(total)).c_str());
  };
  v1::Dataset dataset;
  *status = FindOrUploadDataset(
      client.stub(),
      [&](bool streaming) { return streaming ? client.StreamContext() : client.UnaryContext(); }, upload,
      bar ? std::function<void(size_t, size_t)>(progress) : nullptr, &dataset);
  if (drew) std::fprintf(stderr, "\n");
  if (!status->ok()) return "";
  if (out != nullptr) *out = dataset;
  return dataset.id();
}

// The spec of `path` with --set, --quota and --steps applied. Local data files are uploaded
// (reusing identical uploads), or with `describe_only` (plans: they do not read data) sent as
// their name, size and digest.
v1::JobSpec LoadSpec(Client& client, const tools::Flags& flags, const std::string& path, bool describe_only) {
  std::vector<std::string> overrides = flags.List("set", {});
  if (flags.Has("quota")) overrides.push_back("memory.quota=" + flags.String("quota", ""));
  if (flags.Has("steps")) overrides.push_back("training.steps=" + flags.String("steps", ""));
  return LoadJobSpec(path, overrides, [&](const std::string& file, const std::string& format) {
    Json ref = JsonObject();
    if (describe_only) {
      std::string digest;
      int64_t size = 0;
      if (!server::Sha256OfFile(file, &digest, &size)) {
        throw EngineError(ErrorCode::kInvalidArgument, file + ": cannot read file");
      }
      Json described = JsonObject();
      described.members["name"] = JsonString(file);
      described.members["size_bytes"] = JsonNumber(static_cast<double>(size));
      described.members["sha256"] = JsonString(digest);
      ref.members["file"] = described;
      return ref;
    }
    grpc::Status status;
    const std::string name = file.substr(file.find_last_of('/') + 1);
    const std::string id = UploadFile(client, file, name, format, true, &status, nullptr);
    if (!status.ok()) {
      throw EngineError(ErrorCode::kInvalidArgument, "uploading " + file + ": " + status.error_message());
    }
    std::fprintf(stderr, "slimctl: %s is dataset %s\n", file.c_str(), id.c_str());
    ref.members["dataset"] = JsonString(id);
    return ref;
  });
}

// Plans and submits of a model shape never planned on its device kind wait for a calibration
// (seconds to a minute, once per shape and kind): this asks the server whether one is needed
// (PlanJob with only_if_calibrated, answered at once) and if so says on stderr what the wait
// is. The answer is left in *response.
grpc::Status AnnounceCalibration(Client& client, const v1::JobSpec& spec, v1::PlanJobResponse* response) {
  v1::PlanJobRequest request;
  *request.mutable_spec() = spec;
  request.set_only_if_calibrated(true);
  const grpc::Status status = client.stub().PlanJob(client.UnaryContext().get(), request, response);
  if (status.ok() && response->calibration_needed()) {
    std::fprintf(stderr,
                 "slimctl: calibrating the memory model for this model shape on %s (first time only; seconds to "
                 "a minute)…\n",
                 response->device_kind().c_str());
  }
  return status;
}

// What Ctrl-C during a watch prints before slimctl exits 130: the job keeps running, and how to
// re-attach from the last event seen. Written by the signal handler with write(2) (async-signal-
// safe); rewritten after each event.
char g_reattach_hint[512];
volatile sig_atomic_t g_reattach_length = 0;

void PrintReattachHintAndExit(int) {
  if (g_reattach_length > 0) (void)!::write(STDERR_FILENO, g_reattach_hint, static_cast<size_t>(g_reattach_length));
  ::_exit(130);
}

void SetReattachHint(const std::string& id, int64_t cursor) {
  g_reattach_length = 0;  // the handler prints nothing while the text changes
  const int n = std::snprintf(g_reattach_hint, sizeof(g_reattach_hint),
                              "\nslimctl: stopped watching %s; the job keeps running. Re-attach with: slimctl watch %s "
                              "--after %lld\n",
                              id.c_str(), id.c_str(), static_cast<long long>(cursor));
  g_reattach_length = n > 0 ? std::min<int>(n, sizeof(g_reattach_hint) - 1) : 0;
}

// Follows a job until it ends, reconnecting (with the last sequence seen) when the connection
// drops. Prints a live line on a terminal, one line per event otherwise.
int Follow(Client& client, const std::string& id, int64_t after, OutputFormat format, double reconnect_seconds) {
  SetReattachHint(id, after);
  std::signal(SIGINT, PrintReattachHintAndExit);
  const bool live = Terminal() && IsTable(format);
  int64_t cursor = after;
  v1::Job job;
  bool have_job = false;
  auto last_contact = std::chrono::steady_clock::now();
  double backoff = 0.25;
  while (true) {
    auto context = client.StreamContext();
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(cursor);
    auto reader = client.stub().WatchJob(context.get(), request);
    v1::WatchJobResponse item;
    while (reader->Read(&item)) {
      last_contact = std::chrono::steady_clock::now();
      backoff = 0.25;
      if (item.has_snapshot()) {
        job = item.snapshot();
        have_job = true;
        continue;
      }
      const v1::JobEvent& e = item.event();
      cursor = e.sequence();
      SetReattachHint(id, cursor);
      job.set_state(e.state());
      if (format == OutputFormat::kJson) {
        PrintJsonLine(id, "event", e);
        continue;
      }
      if (IsDocument(format)) {
        PrintStructured(e, format);
        continue;
      }
      const v1::JobProgress& p = e.progress();
      if (e.kind() == "progress") {
        job.mutable_progress()->CopyFrom(p);
        const double fraction = p.total_steps() > 0 ? static_cast<double>(p.step()) / p.total_steps() : 0;
        const int width = 24, filled = static_cast<int>(std::lround(width * fraction));
        char line[512];
        std::snprintf(line, sizeof(line), "[%s%s] %3.0f%%  step %lld/%lld  loss %.4f  %.0f tok/s  ETA %s  mem %s / %s",
                      std::string(filled, '#').c_str(), std::string(width - filled, '-').c_str(), 100 * fraction,
                      static_cast<long long>(p.step()), static_cast<long long>(p.total_steps()), p.loss(),
                      p.tokens_per_second(), Duration(p.eta_seconds()).c_str(), Bytes(e.observed_peak_bytes()).c_str(),
                      Bytes(job.quota_bytes()).c_str());
        if (live) {  // one terminal line, never wrapped (a wrapped line leaves a stale copy each update)
          const int columns = TerminalColumns();
          std::printf("\r%s\033[K", columns > 1 ? FitWidth(line, static_cast<size_t>(columns - 1)).c_str() : line);
        } else {
          std::printf("%s\n", line);
        }
      } else {
        if (e.quota_bytes() > 0) job.set_quota_bytes(e.quota_bytes());
        std::printf("%s%s %-10s %s\n", live ? "\r\033[K" : "", AbsoluteTime(e.time()).c_str(), e.kind().c_str(),
                    e.message().c_str());
      }
      std::fflush(stdout);
    }
    const grpc::Status status = reader->Finish();
    if (status.ok() && have_job && IsTerminal(job.state())) {
      if (live) std::printf("\n");
      if (IsTable(format)) std::printf("job %s %s\n", id.c_str(), StateName(job.state()).c_str());
      return ExitForJob(job.state());
    }
    const bool transient = status.error_code() == grpc::StatusCode::UNAVAILABLE || status.ok();
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_contact).count();
    if (!transient || waited > reconnect_seconds) return ReportError(status, "watch " + id);
    if (live) std::printf("\r\033[K");
    std::fprintf(stderr, "slimctl: connection lost (%s); reconnecting from event %lld\n", status.error_message().c_str(),
                 static_cast<long long>(cursor));
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(backoff * 1000)));
    backoff = std::min(5.0, backoff * 2);
  }
}

// ---------------------------------------------------------------------------------------------

// A fresh CreateJob request id: "slimctl-" and 128 random bits in hex.
std::string NewRequestId() {
  std::random_device random;
  std::string id = "slimctl-";
  for (int i = 0; i < 4; ++i) {
    char part[9];
    std::snprintf(part, sizeof(part), "%08x", static_cast<unsigned>(random()));
    id += part;
  }
  return id;
}

int Submit(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string path = flags.Positional(1, "the job spec file");
  v1::CreateJobRequest request;
  request.set_display_name(flags.String("name", "-") == "-" ? "" : flags.String("name", "-"));
  request.set_priority(static_cast<int32_t>(flags.Int("priority", 0, -1000)));
  const bool watch = flags.Bool("watch");
  const double reconnect = flags.Double("reconnect-timeout", 300);
  request.set_request_id(flags.Has("request-id") ? flags.String("request-id", "") : NewRequestId());
  *request.mutable_spec() = LoadSpec(client, flags, path, /*describe_only=*/false);
  flags.CheckAllUsed();
  if (watch && format == OutputFormat::kName) {
    throw EngineError(ErrorCode::kInvalidArgument, "--output name: cannot be used with --watch (its events have no names)");
  }
  // Its errors are CreateJob's too, which reports them.
  v1::PlanJobResponse calibration;
  (void)AnnounceCalibration(client, request.spec(), &calibration);
  // The request id makes retrying safe: a create whose answer was lost (deadline, broken
  // connection, a restarting server) is returned by the retry instead of being made twice.
  v1::CreateJobResponse response;
  grpc::Status status;
  for (int attempt = 1;; ++attempt) {
    status = client.stub().CreateJob(client.SlowUnaryContext().get(), request, &response);
    const bool transient = status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                           status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (status.ok() || !transient || attempt == 3) break;
    std::fprintf(stderr, "slimctl: submit: %s; retrying (request %s)\n", status.error_message().c_str(),
                 request.request_id().c_str());
    std::this_thread::sleep_for(std::chrono::seconds(attempt));
  }
  if (!status.ok()) return ReportError(status, "submit");
  const v1::Job& job = response.job();
  if (format == OutputFormat::kName) {
    PrintJob(job, format);
  } else if (IsTable(format)) {
    std::printf("job %s queued: quota %s, chunk size %lld (%s), predicted peak %s\n", job.id().c_str(),
                Bytes(job.quota_bytes()).c_str(), static_cast<long long>(job.chunk_size()), job.mode().c_str(),
                Bytes(job.predicted_peak_bytes()).c_str());
  } else if (watch && format == OutputFormat::kJson) {
    PrintJsonLine(job.id(), "job", job);  // the created job first, then its events
  } else {
    PrintStructured(job, format);
  }
  std::fflush(stdout);
  return watch ? Follow(client, job.id(), 0, format, reconnect) : kExitOk;
}

int Get(Client& client, const tools::Flags& flags, OutputFormat format) {
  v1::GetJobRequest request;
  request.set_id(flags.Positional(1, "the job id"));
  flags.CheckAllUsed();
  v1::GetJobResponse response;
  const grpc::Status status = client.stub().GetJob(client.UnaryContext().get(), request, &response);
  if (!status.ok()) return ReportError(status, "get " + request.id());
  PrintJob(response.job(), format);
  return kExitOk;
}

int List(Client& client, const tools::Flags& flags, OutputFormat format) {
  v1::ListJobsRequest request;
  for (const std::string& s : flags.List("state", {})) {
    v1::JobState state;
    std::string upper;
    for (char c : s) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (!v1::JobState_Parse("JOB_STATE_" + upper, &state)) {
      throw EngineError(ErrorCode::kInvalidArgument,
                        "--state: unknown state '" + s + "' (queued, running, succeeded, failed, cancelling, cancelled)");
    }
    request.add_states(state);
  }
  const int64_t limit = flags.Int("limit", 50, 1);
  flags.CheckAllUsed();
  v1::ListJobsResponse all;
  std::string token;
  do {
    request.set_page_size(static_cast<int32_t>(std::min<int64_t>(1000, limit - all.jobs_size())));
    request.set_page_token(token);
    v1::ListJobsResponse page;
    const grpc::Status status = client.stub().ListJobs(client.UnaryContext().get(), request, &page);
    if (!status.ok()) return ReportError(status, "list");
    for (const v1::Job& j : page.jobs()) *all.add_jobs() = j;
    token = page.next_page_token();
    all.set_next_page_token(token);
  } while (!token.empty() && all.jobs_size() < limit);
  if (IsDocument(format)) {
    PrintStructured(all, format);
    return kExitOk;
  }
  if (format == OutputFormat::kName) {
    for (const v1::Job& j : all.jobs()) PrintJob(j, format);
    return kExitOk;
  }
  const bool wide = format == OutputFormat::kWide;
  std::vector<std::vector<std::string>> rows = {{"ID", "NAME", "STATE", "PRIO", "DEVICE", "QUOTA", "CHUNK", "PROGRESS", "LOSS", "AGE"}};
  if (wide) {  // after QUOTA: how it runs; after LOSS: how well and how fast
    rows[0].insert(rows[0].begin() + 6, {"MODE", "PEAK", "REPLICA"});
    rows[0].insert(rows[0].end() - 1, {"VAL LOSS", "TOK/S", "ETA", "OUTPUT MODEL"});
  }
  for (const v1::Job& j : all.jobs()) {
    const v1::JobProgress& p = j.progress();
    std::vector<std::string> row = {j.id(), j.display_name().empty() ? "-" : j.display_name(), StateCell(j.state()),
                                    std::to_string(j.priority()), DevicesText(j), Bytes(j.quota_bytes()),
                                    std::to_string(j.chunk_size()), ProgressText(j), Loss(p.loss()), Age(j.create_time())};
    if (wide) {
      row.insert(row.begin() + 6, {j.mode().empty() ? "-" : j.mode(), Bytes(j.observed_peak_bytes()),
                                   j.replica().empty() ? "-" : j.replica()});
      row.insert(row.end() - 1, {Loss(p.eval_loss()),
                                 p.tokens_per_second() > 0 ? std::to_string(std::lround(p.tokens_per_second())) : "-",
                                 p.eta_seconds() > 0 && !IsTerminal(j.state()) ? Duration(p.eta_seconds()) : "-",
                                 j.output_model().empty() ? "-" : j.output_model()});
    }
    rows.push_back(std::move(row));
  }
  PrintTable(rows);
  return kExitOk;
}

int Watch(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string id = flags.Positional(1, "the job id");
  const int64_t after = flags.Int("after", 0, 0);
  const double reconnect = flags.Double("reconnect-timeout", 300);
  flags.CheckAllUsed();
  return Follow(client, id, after, format, reconnect);
}

int Cancel(Client& client, const tools::Flags& flags, OutputFormat format) {
  v1::CancelJobRequest request;
  request.set_id(flags.Positional(1, "the job id"));
  flags.CheckAllUsed();
  v1::CancelJobResponse response;
  const grpc::Status status = client.stub().CancelJob(client.UnaryContext().get(), request, &response);
  if (!status.ok()) return ReportError(status, "cancel " + request.id());
  if (IsTable(format)) {
    std::printf("job %s %s\n", response.job().id().c_str(), StateName(response.job().state()).c_str());
  } else {
    PrintJob(response.job(), format);
  }
  return kExitOk;
}

// jobs delete JOB...: ended jobs' records, events, logs and checkpoints, one by one; the exit
// status is the first failure's.
int Jobs(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string action = flags.Positional(1, "a jobs command (delete)");
  if (action != "delete") throw EngineError(ErrorCode::kInvalidArgument, "jobs: unknown command '" + action + "' (delete)");
  std::vector<std::string> ids = {flags.Positional(2, "the job id")};  // at least one
  for (size_t i = 3; i < flags.positional_count(); ++i) ids.push_back(flags.Positional(i, "the job id"));
  flags.CheckAllUsed();
  int exit_status = kExitOk;
  for (const std::string& id : ids) {
    v1::DeleteJobRequest request;
    request.set_id(id);
    v1::DeleteJobResponse response;
    const grpc::Status status = client.stub().DeleteJob(client.UnaryContext().get(), request, &response);
    if (!status.ok()) {
      const int failed = ReportError(status, "jobs delete " + request.id());
      if (exit_status == kExitOk) exit_status = failed;
      continue;
    }
    if (IsTable(format)) std::printf("deleted %s\n", request.id().c_str());
    if (format == OutputFormat::kName) std::printf("%s\n", request.id().c_str());
  }
  return exit_status;
}

// logs JOB [-f] [--tail N]: the worker's log; a data-parallel job's ranks are told apart by a
// "[rank N] " prefix. With -f it follows until the job ends, then exits with the job's status.
int Logs(Client& client, const tools::Flags& flags, OutputFormat) {
  v1::GetJobLogsRequest request;
  request.set_id(flags.Positional(1, "the job id"));
  request.set_follow(flags.Bool("follow"));
  request.set_tail_lines(flags.Int("tail", 0, 0));
  flags.CheckAllUsed();
  v1::GetJobRequest get;
  get.set_id(request.id());
  v1::GetJobResponse job;
  const grpc::Status found = client.stub().GetJob(client.UnaryContext().get(), get, &job);
  if (!found.ok()) return ReportError(found, "logs " + request.id());
  const bool prefix = job.job().spec().data_parallel().workers() > 1;
  auto context = client.StreamContext();
  auto reader = client.stub().GetJobLogs(context.get(), request);
  v1::GetJobLogsResponse item;
  while (reader->Read(&item)) {
    if (!prefix) {
      std::fwrite(item.data().data(), 1, item.data().size(), stdout);
    } else {
      const std::string label = "[rank " + std::to_string(item.rank()) + "] ";
      for (size_t at = 0; at < item.data().size();) {
        const size_t end = item.data().find('\n', at);
        const size_t next = end == std::string::npos ? item.data().size() : end + 1;
        std::fputs(label.c_str(), stdout);
        std::fwrite(item.data().data() + at, 1, next - at, stdout);
        at = next;
      }
    }
    std::fflush(stdout);
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return ReportError(status, "logs " + request.id());
  if (!request.follow()) return kExitOk;
  // Followed to the end: the job's own exit status, as watch gives.
  const grpc::Status ended = client.stub().GetJob(client.UnaryContext().get(), get, &job);
  return ended.ok() ? ExitForJob(job.job().state()) : ReportError(ended, "logs " + request.id());
}

// The events stored so far (WatchJob read up to the snapshot's last sequence, then closed).
int Events(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string id = flags.Positional(1, "the job id");
  const int64_t after = flags.Int("after", 0, 0);
  flags.CheckAllUsed();
  auto context = client.StreamContext();
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(static_cast<int64_t>(client.connection().timeout_seconds)));
  v1::WatchJobRequest request;
  request.set_id(id);
  request.set_after_sequence(after);
  auto reader = client.stub().WatchJob(context.get(), request);
  v1::WatchJobResponse item;
  int64_t last = -1;
  std::vector<v1::JobEvent> events;
  bool complete = false;  // every event up to the snapshot's last sequence arrived
  while (reader->Read(&item)) {
    if (item.has_snapshot()) {
      last = item.snapshot().last_sequence();
      if (last <= after) {
        complete = true;
        break;
      }
      continue;
    }
    events.push_back(item.event());
    if (item.event().sequence() >= last) {
      complete = true;
      break;
    }
  }
  if (last >= 0) context->TryCancel();  // the events up to the snapshot are in; stop the stream
  const grpc::Status status = reader->Finish();
  if (!complete) {
    return ReportError(status.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended early") : status,
                       "events " + id);
  }
  if (IsDocument(format)) {
    for (const v1::JobEvent& e : events) PrintStructured(e, format);
    return kExitOk;
  }
  std::vector<std::vector<std::string>> rows = {{"SEQ", "TIME", "KIND", "STATE", "MESSAGE"}};
  for (const v1::JobEvent& e : events) {
    std::string message = e.message();
    if (e.kind() == "progress") {
      message = "step " + std::to_string(e.progress().step()) + "/" + std::to_string(e.progress().total_steps()) +
                ", loss " + Loss(e.progress().loss());
    }
    rows.push_back({std::to_string(e.sequence()), AbsoluteTime(e.time()), e.kind(), StateCell(e.state()),
                    message.substr(0, message.find('\n'))});
  }
  PrintTable(rows);
  return kExitOk;
}

int Plan(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string path = flags.Positional(1, "the job spec file");
  v1::PlanJobRequest request;
  *request.mutable_spec() = LoadSpec(client, flags, path, /*describe_only=*/true);
  flags.CheckAllUsed();
  v1::PlanJobResponse response;
  grpc::Status status = AnnounceCalibration(client, request.spec(), &response);
  if (status.ok() && response.calibration_needed()) {
    status = client.stub().PlanJob(client.SlowUnaryContext().get(), request, &response);
  }
  if (!status.ok()) return ReportError(status, "plan");
  if (IsDocument(format)) {
    PrintStructured(response, format);
  } else if (response.feasible()) {
    std::printf("chunk size %lld (%s), predicted peak %s of quota %s on %s, about %.3g s per step%s\n",
                static_cast<long long>(response.chunk_size()), response.mode().c_str(),
                Bytes(response.predicted_peak_bytes()).c_str(), Bytes(response.quota_bytes()).c_str(),
                response.device_kind().c_str(), response.est_step_seconds(),
                response.total_steps() > 0 ? (", " + std::to_string(response.total_steps()) + " steps").c_str() : "");
    if (response.full_backprop_peak_bytes() > 0) {
      std::printf("full backprop (chunk size = seq_len) would peak at %s: %s the quota\n",
                  Bytes(response.full_backprop_peak_bytes()).c_str(),
                  response.full_backprop_peak_bytes() > response.quota_bytes() ? "does not fit" : "fits");
    }
  } else {
    // Infeasible with a quota above the minimum: no device of the kind is that large.
    const bool too_large = response.min_quota_bytes() > 0 && response.quota_bytes() >= response.min_quota_bytes();
    std::printf("does not fit: quota %s%s, minimum %s\n", Bytes(response.quota_bytes()).c_str(),
                too_large ? (" is more than the largest " + response.device_kind() + " device").c_str() : "",
                Bytes(response.min_quota_bytes()).c_str());
  }
  return response.feasible() ? kExitOk : kExitQuota;
}

int Devices(Client& client, const tools::Flags& flags, OutputFormat format) {
  flags.CheckAllUsed();
  v1::ListDevicesResponse response;
  const grpc::Status status = client.stub().ListDevices(client.UnaryContext().get(), v1::ListDevicesRequest(), &response);
  if (!status.ok()) return ReportError(status, "devices");
  if (IsDocument(format)) {
    PrintStructured(response, format);
    return kExitOk;
  }
  if (format == OutputFormat::kName) {
    for (const v1::Device& d : response.devices()) std::printf("%s\n", d.name().c_str());
    return kExitOk;
  }
  const bool wide = format == OutputFormat::kWide;
  // FOOTPRINT: each worker process's own memory, counted in COMMITTED once per process.
  std::vector<std::vector<std::string>> rows = {{"DEVICE", "KIND", "CAPACITY", "FOOTPRINT", "COMMITTED", "OBSERVED", "JOBS"}};
  // PROCESSES: what the OS (resident) or the driver (NVML) attributes to the workers there.
  if (wide) rows[0].insert(rows[0].begin() + 6, {"IN USE", "PROCESSES", "DESCRIPTION"});
  for (const v1::Device& d : response.devices()) {
    std::string jobs;
    for (const std::string& j : d.job_ids()) jobs += (jobs.empty() ? "" : ",") + j;
    for (const std::string& r : d.reservations()) jobs += (jobs.empty() ? "" : ",") + r;  // e.g. a Generate
    rows.push_back({d.name(), d.kind(), Bytes(d.capacity_bytes()), Bytes(d.worker_footprint_bytes()),
                    Bytes(d.committed_bytes()), Bytes(d.observed_bytes()), jobs.empty() ? "-" : jobs});
    if (wide) {
      rows.back().insert(rows.back().begin() + 6, {Bytes(d.current_bytes()),
                                                   d.process_bytes() < 0 ? "unknown" : Bytes(d.process_bytes()),
                                                   d.description()});
    }
  }
  PrintTable(rows);
  return kExitOk;
}

// A list of datasets or models as a table (wide: the whole digest and the owner) or names.
void PrintDatasets(const std::vector<v1::Dataset>& datasets, OutputFormat format) {
  const bool wide = format == OutputFormat::kWide;
  std::vector<std::vector<std::string>> rows = {{"ID", "NAME", "FORMAT", "SIZE", "SHA256", "AGE"}};
  if (wide) rows[0].push_back("TENANT");
  for (const v1::Dataset& d : datasets) {
    if (format == OutputFormat::kName) {
      std::printf("%s\n", d.id().c_str());
      continue;
    }
    rows.push_back({d.id(), d.name(), d.format(), FormatBytes(d.size_bytes()), wide ? d.sha256() : d.sha256().substr(0, 12),
                    Age(d.create_time())});
    if (wide) rows.back().push_back(d.tenant().empty() ? "-" : d.tenant());
  }
  if (IsTable(format)) PrintTable(rows);
}

int Datasets(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string action = flags.Positional(1, "a datasets command (upload, list, get, delete)");
  if (action == "upload") {
    const std::string path = flags.Positional(2, "the file to upload");
    const std::string name = flags.String("name", path.substr(path.find_last_of('/') + 1));
    const std::string data_format = flags.String("format", "text");
    flags.CheckAllUsed();
    grpc::Status status;
    v1::Dataset dataset;
    UploadFile(client, path, name, data_format, true, &status, &dataset);
    if (!status.ok()) return ReportError(status, "upload " + path);
    if (IsDocument(format)) {
      PrintStructured(dataset, format);
    } else {
      PrintDatasets({dataset}, format);
    }
    return kExitOk;
  }
  if (action == "list") {
    flags.CheckAllUsed();
    v1::ListDatasetsResponse response;
    v1::ListDatasetsRequest request;
    request.set_page_size(1000);
    const grpc::Status status = client.stub().ListDatasets(client.UnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "datasets list");
    if (IsDocument(format)) {
      PrintStructured(response, format);
    } else {
      PrintDatasets({response.datasets().begin(), response.datasets().end()}, format);
    }
    return kExitOk;
  }
  if (action == "get" || action == "delete") {
    const std::string id = flags.Positional(2, "the dataset id");
    const bool force = action == "delete" && flags.Bool("force");
    flags.CheckAllUsed();
    if (action == "delete") {
      v1::DeleteDatasetRequest request;
      request.set_id(id);
      request.set_force(force);
      v1::DeleteDatasetResponse response;
      grpc::Status status = client.stub().DeleteDataset(client.UnaryContext().get(), request, &response);
      // Ended jobs used it: on a terminal, ask; elsewhere the answer is --force.
      const bool used_by_ended = status.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
                                 status.error_message().find("delete it with force") != std::string::npos;
      if (used_by_ended && ::isatty(STDIN_FILENO) != 0 && ::isatty(STDERR_FILENO) != 0) {
        std::fprintf(stderr, "%s.\ndelete %s anyway? [y/N] ", status.error_message().c_str(), id.c_str());
        std::string answer;
        std::getline(std::cin, answer);
        if (answer != "y" && answer != "Y" && answer != "yes") {
          std::fprintf(stderr, "slimctl: %s kept\n", id.c_str());
          return kExitConflict;
        }
        request.set_force(true);
        status = client.stub().DeleteDataset(client.UnaryContext().get(), request, &response);
      } else if (used_by_ended) {
        status = grpc::Status(status.error_code(), status.error_message() + " (--force)");
      }
      if (!status.ok()) return ReportError(status, "datasets delete " + id);
      if (IsTable(format)) std::printf("deleted %s\n", id.c_str());
      if (format == OutputFormat::kName) std::printf("%s\n", id.c_str());
      return kExitOk;
    }
    v1::GetDatasetRequest request;
    request.set_id(id);
    v1::GetDatasetResponse response;
    const grpc::Status status = client.stub().GetDataset(client.UnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "datasets get " + id);
    if (IsDocument(format)) {
      PrintStructured(response.dataset(), format);
    } else {
      PrintDatasets({response.dataset()}, format);
    }
    return kExitOk;
  }
  throw EngineError(ErrorCode::kInvalidArgument, "datasets: unknown command '" + action + "' (upload, list, get, delete)");
}

void PrintModels(const std::vector<v1::Model>& models, OutputFormat format) {
  const bool wide = format == OutputFormat::kWide;
  std::vector<std::vector<std::string>> rows = {{"ID", "NAME", "PARAMETERS", "SIZE", "SOURCE JOB", "AGE"}};
  if (wide) rows[0].push_back("TENANT");
  for (const v1::Model& m : models) {
    if (format == OutputFormat::kName) {
      std::printf("%s\n", m.id().c_str());
      continue;
    }
    rows.push_back({m.id(), m.name(), std::to_string(m.parameters()), FormatBytes(m.size_bytes()),
                    m.source_job().empty() ? "-" : m.source_job(), Age(m.create_time())});
    if (wide) rows.back().push_back(m.tenant().empty() ? "(shared)" : m.tenant());
  }
  if (IsTable(format)) PrintTable(rows);
}

int Models(Client& client, const tools::Flags& flags, OutputFormat format) {
  const std::string action = flags.Positional(1, "a models command (list, get, import, export)");
  if (action == "list") {
    flags.CheckAllUsed();
    v1::ListModelsRequest request;
    request.set_page_size(1000);
    v1::ListModelsResponse response;
    const grpc::Status status = client.stub().ListModels(client.UnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "models list");
    if (IsDocument(format)) {
      PrintStructured(response, format);
    } else {
      PrintModels({response.models().begin(), response.models().end()}, format);
    }
    return kExitOk;
  }
  if (action == "get") {
    v1::GetModelRequest request;
    request.set_id(flags.Positional(2, "the model id"));
    flags.CheckAllUsed();
    v1::GetModelResponse response;
    const grpc::Status status = client.stub().GetModel(client.UnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "models get " + request.id());
    if (IsDocument(format)) {
      PrintStructured(response.model(), format);
    } else {
      PrintModels({response.model()}, format);
      if (IsTable(format)) std::printf("config: %s\n", response.model().config_json().c_str());
    }
    return kExitOk;
  }
  if (action == "import") {
    v1::ImportModelRequest request;
    std::string path = flags.Positional(2, "the model file or Hugging Face checkpoint directory (a path the server can read)");
    if (!path.empty() && path[0] != '/') {
      char cwd[4096];
      if (::getcwd(cwd, sizeof(cwd)) != nullptr) path = std::string(cwd) + "/" + path;
    }
    request.set_path(path);
    request.set_name(flags.String("name", "-") == "-" ? "" : flags.String("name", "-"));
    // A checkpoint directory's attention (the server refuses these for a model file).
    if (flags.Has("feature-map")) request.set_feature_map(flags.String("feature-map", ""));
    if (flags.Has("features")) request.set_features(static_cast<int32_t>(std::min<int64_t>(flags.Int("features", 64, 1), 1 << 20)));
    flags.CheckAllUsed();
    v1::ImportModelResponse response;
    const grpc::Status status = client.stub().ImportModel(client.SlowUnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "models import");
    if (response.existing()) {  // the same bytes were imported before: that model, not a copy
      std::fprintf(stderr, "slimctl: %s is already imported as %s (%s)\n", path.c_str(), response.model().id().c_str(),
                   response.model().name().c_str());
    }
    if (IsDocument(format)) {
      PrintStructured(response.model(), format);
    } else {
      PrintModels({response.model()}, format);
    }
    return kExitOk;
  }
  if (action == "delete") {
    v1::DeleteModelRequest request;
    request.set_id(flags.Positional(2, "the model id"));
    flags.CheckAllUsed();
    v1::DeleteModelResponse response;
    const grpc::Status status = client.stub().DeleteModel(client.UnaryContext().get(), request, &response);
    if (!status.ok()) return ReportError(status, "models delete " + request.id());
    if (IsTable(format)) std::printf("deleted %s\n", request.id().c_str());
    if (format == OutputFormat::kName) std::printf("%s\n", request.id().c_str());
    return kExitOk;
  }
  if (action == "export") {
    v1::ExportModelRequest request;
    request.set_id(flags.Positional(2, "the model id"));
    const std::string out = flags.String("out", "");  // required; "-" for stdout
    flags.CheckAllUsed();
    // The model's bytes into `sink`, counted in `received`; the exit status (after saying why
    // when the export did not complete).
    int64_t received = 0;
    const auto download = [&](std::ostream& sink) {
      auto context = client.StreamContext();
      auto reader = client.stub().ExportModel(context.get(), request);
      v1::ExportModelResponse chunk;
      int64_t total = 0;
      while (reader->Read(&chunk)) {
        if (chunk.total_bytes() > 0) total = chunk.total_bytes();
        sink.write(chunk.chunk().data(), static_cast<std::streamsize>(chunk.chunk().size()));
        received += static_cast<int64_t>(chunk.chunk().size());
      }
      sink.flush();
      const grpc::Status status = reader->Finish();
      if (!status.ok()) return ReportError(status, "models export " + request.id());
      if (!sink || received != total) {
        std::fprintf(stderr, "slimctl: models export: wrote %lld of %lld bytes\n", static_cast<long long>(received),
                     static_cast<long long>(total));
        return static_cast<int>(kExitError);
      }
      return static_cast<int>(kExitOk);
    };
    if (out == "-") return download(std::cout);
    const std::string tmp = out + ".part";
    std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
    if (!file) throw EngineError(ErrorCode::kInvalidArgument, "--out: cannot write " + tmp);
    const int exit_status = download(file);
    file.close();
    if (exit_status != kExitOk || !file) {
      std::remove(tmp.c_str());
      return exit_status != kExitOk ? exit_status : static_cast<int>(kExitError);
    }
    if (std::rename(tmp.c_str(), out.c_str()) != 0) {
      std::remove(tmp.c_str());
      throw EngineError(ErrorCode::kInvalidArgument, "--out: cannot write " + out);
    }
    if (IsTable(format)) std::printf("wrote %s (%s)\n", out.c_str(), FormatBytes(received).c_str());
    return kExitOk;
  }
  throw EngineError(ErrorCode::kInvalidArgument,
                    "models: unknown command '" + action + "' (list, get, import, export, delete)");
}

int Generate(Client& client, const tools::Flags& flags, OutputFormat) {
  v1::GenerateRequest request;
  request.set_model(flags.Positional(1, "the model id"));
  request.set_prompt(flags.String("prompt", ""));
  request.set_max_tokens(static_cast<int32_t>(flags.Int("max-tokens", 64, 1)));
  request.set_temperature(flags.Double("temperature", 0.8));
  request.set_top_k(static_cast<int32_t>(flags.Int("top-k", 0, 0)));
  request.set_seed(flags.Int("seed", 0, 0));
  flags.CheckAllUsed();
  auto context = client.StreamContext();
  auto reader = client.stub().Generate(context.get(), request);
  v1::GenerateResponse piece;
  std::fputs(request.prompt().c_str(), stdout);
  while (reader->Read(&piece)) {
    std::fputs(piece.text().c_str(), stdout);
    std::fflush(stdout);
  }
  std::fputc('\n', stdout);
  const grpc::Status status = reader->Finish();
  return status.ok() ? kExitOk : ReportError(status, "generate");
}

// grpc.health.v1.Health/Check with an empty request, through the generic stub (the health
// messages are not part of slim's API): the reply {status: SERVING} is the bytes 08 01.
int Health(Client& client, const tools::Flags& flags, OutputFormat format) {
  flags.CheckAllUsed();
  grpc::GenericStub generic(client.channel());
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1), response;
  auto context = client.UnaryContext();
  std::mutex mu;
  std::condition_variable done_cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(context.get(), "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                    [&](grpc::Status s) {
                      std::lock_guard<std::mutex> lock(mu);
                      status = std::move(s);
                      done = true;
                      done_cv.notify_one();
                    });
  {
    std::unique_lock<std::mutex> lock(mu);
    done_cv.wait(lock, [&] { return done; });
  }
  if (!status.ok()) return ReportError(status, "health");
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  const bool serving = bytes == std::string("\x08\x01", 2);
  if (format == OutputFormat::kJson) {
    std::printf("{\"serving\":%s}\n", serving ? "true" : "false");
  } else {
    std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
  }
  return serving ? kExitOk : kExitUnavailable;
}

int Version(Client& client, const tools::Flags& flags, OutputFormat format) {
  flags.CheckAllUsed();
  v1::ListDevicesResponse response;
  const grpc::Status status = client.stub().ListDevices(client.UnaryContext().get(), v1::ListDevicesRequest(), &response);
  if (format == OutputFormat::kJson) {
    std::printf("{\"client\":\"%s\",\"api\":\"slim.v1\",\"server\":\"%s\",\"reachable\":%s}\n", kVersion,
                client.connection().server.c_str(), status.ok() ? "true" : "false");
  } else {
    std::printf("slimctl %s (API slim.v1); server %s: %s\n", kVersion, client.connection().server.c_str(),
                status.ok() ? "reachable" : ("unreachable: " + status.error_message()).c_str());
  }
  return kExitOk;
}

}  // namespace

const char kMainHelp[] = R"(usage: slimctl <command> [arguments] [flags]

commands:
  submit FILE        create a job from a spec file (--watch to follow it)
  get JOB            one job in detail
  list               jobs, newest first (--state running,queued --limit N)
  watch JOB          follow a job live until it ends; reconnects if the connection drops
  cancel JOB         cancel a queued or running job
  events JOB         the job's recorded events
  logs JOB           the worker's log (-f to follow, --tail N)
  jobs delete JOB..  delete ended jobs: records, events, logs and checkpoints
  plan FILE          dry run: chunk size, predicted peak and step time for a spec and quota
                     (local data files are described by size and digest, not uploaded)
  devices            devices, their capacity, committed quota, observed use and jobs
  datasets           upload FILE | list | get ID | delete ID [--force]
  models             list | get ID | import PATH | export ID --out FILE | delete ID
  generate MODEL     sample text (--prompt TEXT)
  version            client and API version, and whether the server answers
  health             the server's grpc.health.v1 status (no token needed; for probes)

`slimctl <command> --help` shows a command's flags and examples.

exit status: 0 ok; 1 internal error; 2 bad arguments or invalid request; 3 quota cannot fit;
4 not found; 5 conflict (wrong state, in use); 6 server unreachable or too slow; 7 not allowed;
8 the watched job failed; 9 the watched job was cancelled
)";

const std::map<std::string, std::string> kCommandHelp = {
    {"submit", R"(usage: slimctl submit FILE [flags]
  FILE is a YAML or JSON job spec (docs/slimctl.md); data entries that are local files are
  uploaded first (reused if the same bytes were uploaded before).
  --name NAME              display name
  --priority P             higher runs first and may shrink lower-priority jobs (default 0)
  --request-id ID          CreateJob's request id (default: a new random one); a submit
                           repeated with the same id returns the job the first one created
  --quota SIZE             override memory.quota (e.g. 512MiB)
  --steps N                override training.steps
  --set F=V[,F=V...]       override any field, e.g. --set training.optimizer.lr=1e-4
  --watch                  follow the job until it ends; the exit status is the job's
  --reconnect-timeout S    with --watch: give up after S seconds without the server (300)
examples:
  slimctl submit examples/finetune-docs.slimctl.yaml --watch
  slimctl submit job.yaml --quota 2GiB --priority 5 --output json
)"},
    {"get", "usage: slimctl get JOB [-o json|yaml|name]\nexample: slimctl get job-000001\n"},
    {"list", R"(usage: slimctl list [--state S[,S...]] [--limit N] [-o wide|json|yaml|name]
  columns: id, name, state, priority, device, quota, chunk size, progress, loss, age;
  -o wide adds mode, observed peak, replica, validation loss, tokens/s, ETA, output model
examples:
  slimctl list --state running,queued
  slimctl list --state failed -o name
)"},
    {"watch", R"(usage: slimctl watch JOB [--after SEQ] [--reconnect-timeout S]
  a live progress bar (step, loss, tokens/s, ETA, memory against quota) and one line per
  event; exit status 0 succeeded, 8 failed, 9 cancelled
example: slimctl watch job-000001
)"},
    {"cancel", "usage: slimctl cancel JOB\nexample: slimctl cancel job-000001\n"},
    {"logs", R"(usage: slimctl logs JOB [-f|--follow] [--tail N]
  the worker's log (every rank's for a data-parallel job, each line prefixed "[rank N] ");
  --tail N starts from the last N lines (of each rank); -f follows until the job ends, then
  exits with its status as watch does
examples:
  slimctl logs job-000001 --tail 20
  slimctl logs job-000001 -f
)"},
    {"jobs", R"(usage: slimctl jobs delete JOB [JOB...]
  deletes ended jobs (succeeded, failed, cancelled): their records, events, worker logs and
  checkpoints; their output models stay (slimctl models delete)
example: slimctl list --state failed -o name | xargs slimctl jobs delete
)"},
    {"events", "usage: slimctl events JOB [--after SEQ] [--output json|yaml]\nexample: slimctl events job-000001 --output json\n"},
    {"plan", R"(usage: slimctl plan FILE [--quota SIZE] [--set F=V]
  exit status 3 when the quota cannot fit (the output gives the minimum)
example: slimctl plan job.yaml --quota 256MiB
)"},
    {"devices", "usage: slimctl devices [-o wide|json|yaml|name]\n  capacity, committed quota, observed peak and the jobs on each device (wide: memory in use\n  and the device's description)\nexample: slimctl devices -o wide\n"},
    {"datasets", R"(usage: slimctl datasets upload FILE [--name N] [--format text|jsonl|ids-u16|ids-u32]
       slimctl datasets list | get ID | delete ID [--force]
  delete refuses while a queued or running job uses the dataset; when ended jobs used it, it
  asks on a terminal, and elsewhere needs --force
examples:
  slimctl datasets upload corpus.txt --name corpus
  slimctl datasets delete ds-000003
)"},
    {"models", R"(usage: slimctl models list | get ID | import PATH [--name N] [--feature-map M] [--features F]
       | export ID --out FILE | delete ID
  import takes a path the server can read (a local server: any local file): a slim model file,
  or a Hugging Face checkpoint directory (gpt2, llama, mistral, qwen2: config.json and
  safetensors) that the server converts, keeping its exact softmax attention or, with
  --feature-map favor+|relu|elu+1|sqr|learned, converting it to Performer features (--features per head
  for favor+, default 64); a file imported before returns that model; delete refuses while a
  queued or running job fine-tunes it
examples:
  slimctl models import models/base-mini.safetensors --name base-mini
  slimctl models import /data/checkpoints/gpt2 --feature-map favor+ --name gpt2-favor
  slimctl models export model-000002 --out tuned.safetensors
)"},
    {"generate", R"(usage: slimctl generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--seed S]
example: slimctl generate model-000002 --prompt "The planner " --max-tokens 100 --seed 1
)"},
    {"version", "usage: slimctl version [--output json]\nexample: slimctl version --server unix:/run/slimd.sock\n"},
    {"health", "usage: slimctl health [--output json]\n  exit 0 when SERVING, 6 otherwise (no token needed)\n"
               "example: slimctl health --server 127.0.0.1:50051 --timeout 3\n"},
};

const std::set<std::string>& BooleanFlags() {
  static const std::set<std::string> kBooleans = {"watch", "tls", "help", "version", "follow", "force"};
  return kBooleans;
}

const std::map<char, std::string>& ShortFlags() {
  static const std::map<char, std::string> kShort = {{'h', "help"}, {'o', "output"}, {'f', "follow"}};
  return kShort;
}

namespace {

// The command named `name`'s help entry; INVALID_ARGUMENT with a suggestion if there is none.
std::map<std::string, std::string>::const_iterator FindCommand(const std::string& name) {
  const auto help = kCommandHelp.find(name);
  if (help != kCommandHelp.end()) return help;
  std::vector<std::string> names;
  for (const auto& [command, text] : kCommandHelp) names.push_back(command);
  const std::string near = tools::ClosestMatch(name, names);
  throw EngineError(ErrorCode::kInvalidArgument, "unknown command '" + name + "'" +
                                                     (near.empty() ? "" : " (did you mean '" + near + "'?)") +
                                                     "; see slimctl --help");
}

// The long flags a help text mentions ("--watch", "--set"), in order, once each.
std::vector<std::string> FlagsIn(const std::string& text) {
  std::vector<std::string> found;
  for (size_t at = text.find("--"); at != std::string::npos; at = text.find("--", at + 2)) {
    size_t end = at + 2;
    while (end < text.size() && (std::islower(static_cast<unsigned char>(text[end])) || text[end] == '-')) ++end;
    const std::string flag = text.substr(at, end - at);
    if (flag.size() > 3 && std::find(found.begin(), found.end(), flag) == found.end()) found.push_back(flag);
  }
  return found;
}

// completion bash|zsh: a completion script built from the help texts (commands, each command's
// flags, the actions of datasets and models, file names elsewhere). zsh runs the bash one
// through bashcompinit.
int Completion(const tools::Flags& flags) {
  const std::string shell = flags.Positional(1, "a shell (bash or zsh)");
  flags.CheckAllUsed();
  if (shell != "bash" && shell != "zsh") {
    throw EngineError(ErrorCode::kInvalidArgument, "completion: unknown shell '" + shell + "' (bash or zsh)");
  }
  std::string commands = "help completion";
  std::string cases;
  for (const auto& [command, text] : kCommandHelp) {
    commands += " " + command;
    std::string words;
    for (const std::string& f : FlagsIn(text + kConnectionHelp)) words += (words.empty() ? "" : " ") + f;
    cases += "    " + command + ") flags=\"" + words + " --help\" ;;\n";
  }
  std::cout << (shell == "zsh" ? "#compdef slimctl\nautoload -U +X bashcompinit && bashcompinit\n" : "")
            << "# slimctl " << shell << " completion: source <(slimctl completion " << shell << ")\n"
            << "_slimctl() {\n"
               "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" cmd=\"${COMP_WORDS[1]}\" flags=\"\"\n"
               "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n"
               "    COMPREPLY=($(compgen -W \"" << commands << " --help --version\" -- \"$cur\")); return\n"
               "  fi\n"
               "  case \"${COMP_WORDS[COMP_CWORD-1]}\" in\n"
               "    -o|--output) COMPREPLY=($(compgen -W \"table wide json yaml name\" -- \"$cur\")); return ;;\n"
               "  esac\n"
               "  case \"$cmd\" in\n" << cases
            << "    help) COMPREPLY=($(compgen -W \"" << commands << "\" -- \"$cur\")); return ;;\n"
               "    completion) COMPREPLY=($(compgen -W \"bash zsh\" -- \"$cur\")); return ;;\n"
               "  esac\n"
               "  if [[ \"$cur\" == -* ]]; then COMPREPLY=($(compgen -W \"$flags\" -- \"$cur\")); return; fi\n"
               "  if [ \"$COMP_CWORD\" -eq 2 ]; then\n"
               "    case \"$cmd\" in\n"
               "      datasets) COMPREPLY=($(compgen -W \"upload list get delete\" -- \"$cur\")); return ;;\n"
               "      models) COMPREPLY=($(compgen -W \"list get import export delete\" -- \"$cur\")); return ;;\n"
               "      jobs) COMPREPLY=($(compgen -W \"delete\" -- \"$cur\")); return ;;\n"
               "    esac\n"
               "  fi\n"
               "  COMPREPLY=($(compgen -f -- \"$cur\"))\n"
               "}\n"
               "complete -F _slimctl slimctl\n";
  return kExitOk;
}

}  // namespace

std::string VersionLine() { return std::string("slimctl ") + kVersion + " (API slim.v1)"; }

int RunCommand(const tools::Flags& flags) {
  const std::string command = flags.Positional(0, "a command");
  if (command == "help") {  // help [COMMAND]
    if (flags.positional_count() < 2) {
      std::cout << kMainHelp;
    } else {
      std::cout << FindCommand(flags.Positional(1, "a command"))->second << kConnectionHelp;
    }
    return kExitOk;
  }
  if (command == "completion") return Completion(flags);
  const auto help = FindCommand(command);
  if (flags.Bool("help")) {
    std::cout << help->second << kConnectionHelp;
    return kExitOk;
  }
  const OutputFormat format = ParseOutputFormat(flags);
  static const std::set<std::string> kPrintsResources = {"submit", "get",      "list",   "cancel",
                                                         "devices", "datasets", "models", "jobs"};
  if (format == OutputFormat::kName && kPrintsResources.count(command) == 0) {
    throw EngineError(ErrorCode::kInvalidArgument,
                      "--output name: '" + command +
                          "' prints no resources (name is for submit, get, list, cancel, devices, datasets, models, jobs)");
  }
  Client client(ResolveConnection(flags));
  if (command == "submit") return Submit(client, flags, format);
  if (command == "get") return Get(client, flags, format);
  if (command == "list") return List(client, flags, format);
  if (command == "watch") return Watch(client, flags, format);
  if (command == "cancel") return Cancel(client, flags, format);
  if (command == "events") return Events(client, flags, format);
  if (command == "logs") return Logs(client, flags, format);
  if (command == "jobs") return Jobs(client, flags, format);
  if (command == "plan") return Plan(client, flags, format);
  if (command == "devices") return Devices(client, flags, format);
  if (command == "datasets") return Datasets(client, flags, format);
  if (command == "models") return Models(client, flags, format);
  if (command == "generate") return Generate(client, flags, format);
  if (command == "health") return Health(client, flags, format);
  return Version(client, flags, format);
}

}  // namespace slim::client
