// slim-load: the load benchmark of slimd (bench/load/load_run.h). Parses flags, runs, prints
// the summary and writes the JSON report. Nothing else happens here.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "bench/load/load_run.h"
#include "base/errors.h"
#include "base/flags.h"

namespace {

constexpr char kUsage[] = R"(usage: slim-load [flags]

Against a running slimd: starts training jobs, measures their speed alone, then holds WatchJob
streams open on them while issuing an open-loop mix of CreateJob / GetJob / ListJobs, then
measures their speed alone again; reports per-method latency, what the streams received,
training speed under load vs alone, and slimd's RSS. Every job it creates is cancelled.

connection:
  --address ADDR          slimd (default 127.0.0.1:50051; unix:/path for a socket)
  --token T               bearer token (default: $SLIM_TOKEN)
  --token-file FILE       read the token from the first line of FILE
  --channels N            gRPC connections to spread calls and streams over (default 4)
load:
  --duration S            seconds of load (default 60)
  --streams N             WatchJob streams, spread over the training jobs (default 200)
  --rate R                requests per second, open loop (default 50)
  --mix C,G,L             relative weights of CreateJob, GetJob, ListJobs (default 1,8,1)
  --list-page-size N      ListJobs page size (default 50)
  --warmup S              seconds of training before the first baseline (default 10)
  --baseline S            seconds of training without load, before and after it (default 15)
  --server-pid PID        sample slimd's VmRSS from /proc/PID/status once a second
  --call-timeout S        deadline of each call under load (default 30)
  --seed N                request mix and GetJob targets (default 1)
training jobs:
  --jobs-training N       jobs that train through the whole run (default 2)
  --preset NAME           their model preset (default tiny)
  --seq-len N             (default 1024)      --batch N     (default 2)
  --steps N               (default 1000000: they are cancelled at the end)
  --quota SIZE            their memory quota (default 16MiB)
  --data FILE             text to train on (default: generated, ~128 KiB)
  --queued-quota SIZE     quota of jobs created under load (default: the largest device, so
                          that they queue; priority -1, so they shrink nobody)
  --ready-timeout S       training jobs must be stepping within S seconds (default 600)
output:
  --json-out FILE         the report as JSON (docs/operations.md, "Load")
)";

std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  slim::CheckArgument(in.good(), "--token-file: cannot read " + path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
  return line;
}

slim::load::LoadOptions ParseOptions(int argc, char** argv, std::string* json_out) {
  const slim::tools::Flags flags(argc, argv);
  if (flags.Bool("help")) {
    std::cout << kUsage;
    std::exit(0);
  }
  slim::load::LoadOptions o;
  o.address = flags.String("address", o.address);
  if (const char* env = std::getenv("SLIM_TOKEN"); env != nullptr) o.token = env;
  if (flags.Has("token")) o.token = flags.String("token", "");
  if (flags.Has("token-file")) o.token = FirstLine(flags.String("token-file", ""));
  o.channels = static_cast<int>(flags.Int("channels", o.channels, 1));
  o.duration_seconds = flags.Double("duration", o.duration_seconds);
  o.streams = static_cast<int>(flags.Int("streams", o.streams, 0));
  o.rate = flags.Double("rate", o.rate);
  if (flags.Has("mix")) {
    const std::vector<std::string> mix = flags.List("mix", {});
    slim::CheckArgument(mix.size() == 3, "--mix: three weights, CreateJob,GetJob,ListJobs (e.g. 1,8,1)");
    o.create_weight = std::stod(mix[0]);
    o.get_weight = std::stod(mix[1]);
    o.list_weight = std::stod(mix[2]);
    slim::CheckArgument(o.create_weight >= 0 && o.get_weight >= 0 && o.list_weight >= 0 &&
                            o.create_weight + o.get_weight + o.list_weight > 0,
                        "--mix: weights must be >= 0, not all 0");
  }
  o.list_page_size = static_cast<int>(flags.Int("list-page-size", o.list_page_size, 1));
  o.warmup_seconds = flags.Double("warmup", o.warmup_seconds);
  o.baseline_seconds = flags.Double("baseline", o.baseline_seconds);
  o.server_pid = static_cast<pid_t>(flags.Int("server-pid", 0, 0));
  o.call_timeout_seconds = flags.Double("call-timeout", o.call_timeout_seconds);
  o.seed = static_cast<uint64_t>(flags.Int("seed", 1, 0));
  o.jobs_training = static_cast<int>(flags.Int("jobs-training", o.jobs_training, 1));
  o.preset = flags.String("preset", o.preset);
  o.seq_len = static_cast<int>(flags.Int("seq-len", o.seq_len, 1));
  o.batch_size = static_cast<int>(flags.Int("batch", o.batch_size, 1));
  o.steps = flags.Int("steps", o.steps, 1);
  o.quota = flags.String("quota", o.quota);
  if (flags.Has("data")) o.data_path = flags.String("data", "");
  if (flags.Has("queued-quota")) o.queued_quota = flags.String("queued-quota", "");
  o.ready_timeout_seconds = flags.Double("ready-timeout", o.ready_timeout_seconds);
  if (flags.Has("json-out")) *json_out = flags.String("json-out", "");
  flags.CheckAllUsed();
  slim::CheckArgument(o.duration_seconds > 0, "--duration: must be > 0");
  slim::CheckArgument(o.rate > 0, "--rate: must be > 0");
  slim::CheckArgument(o.baseline_seconds > 0, "--baseline: must be > 0");
  slim::CheckArgument(o.warmup_seconds >= 0, "--warmup: must be >= 0");
  slim::CheckArgument(o.call_timeout_seconds > 0, "--call-timeout: must be > 0");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_out;
  slim::load::LoadOptions options;
  try {
    options = ParseOptions(argc, argv, &json_out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "slim-load: %s\nrun 'slim-load --help' for usage\n", e.what());
    return 2;
  }
  const absl::StatusOr<slim::Json> report = slim::load::RunLoad(options, std::cerr);
  if (!report.ok()) {
    std::fprintf(stderr, "slim-load: %s\n", report.status().ToString().c_str());
    return 1;
  }
  std::cout << slim::load::FormatSummary(*report);
  if (!json_out.empty()) {
    std::ofstream out(json_out + ".tmp");
    out << slim::SerializeJson(*report) << "\n";
    out.close();
    if (!out || std::rename((json_out + ".tmp").c_str(), json_out.c_str()) != 0) {
      std::fprintf(stderr, "slim-load: cannot write %s\n", json_out.c_str());
      return 1;
    }
  }
  return 0;
}
