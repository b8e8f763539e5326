// slim-load's benchmark (project issue 9): against a running slimd, start training jobs, measure
// their training speed without load, then hold WatchJob streams open on them while issuing an
// open-loop rate of CreateJob / GetJob / ListJobs calls, and report per-method latency, what
// the streams received, training speed under load relative to the baseline, and slimd's
// resident memory. Leaves the server as it found it: every job it created is cancelled.
//
// Phases: connect → upload the dataset (reused if the same bytes exist) → create the training
// jobs → wait until each is RUNNING and has stepped → warm-up → baseline (one monitor stream per
// job, no other traffic) → open the load streams and wait for their snapshots → load window
// (requests at fixed intervals whatever the answers: latency is measured from each call's
// scheduled time, so a slow server cannot hide behind fewer calls) → drain the calls → close
// the load streams → baseline again → cancel the queued jobs, then the training jobs.
//
// Training speed is steps per second from the progress events' server timestamps and steps
// (one monitor stream per training job, open throughout), so it is exact to the event and
// independent of how late a stream delivers. The ratio compares the load window with the mean
// of the baselines before and after it, so that a machine whose speed drifts during the run
// (warm-up, other work) does not pass its drift off as the effect of the load.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "base/json.h"

namespace slim::load {

struct LoadOptions {
  std::string address = "127.0.0.1:50051";  // host:port or unix:/path
  std::string token;                         // bearer token; empty: none
  int channels = 4;                          // gRPC connections the streams and calls spread over
  double duration_seconds = 60;              // the load window
  int streams = 200;                         // WatchJob streams, spread over the training jobs
  double rate = 50;                          // requests per second, open loop
  // Relative weights of the request mix.
  double create_weight = 1, get_weight = 8, list_weight = 1;
  int list_page_size = 50;
  double warmup_seconds = 10;                // training runs this long before the first baseline
  double baseline_seconds = 15;              // training speed without load, before and after
  pid_t server_pid = 0;                      // slimd's pid for RSS sampling; 0: not sampled
  double call_timeout_seconds = 30;          // deadline of each call under load
  double ready_timeout_seconds = 600;        // jobs must be RUNNING and stepping by then
  uint64_t seed = 1;                         // the request mix and GetJob targets

  // The training jobs (they run for the whole benchmark and are cancelled at its end).
  int jobs_training = 2;
  std::string preset = "tiny";
  int seq_len = 1024;
  int batch_size = 2;
  int64_t steps = 1000000;
  std::string quota = "16MiB";
  std::string data_path;                     // text file to train on; empty: generated text
  // Quota of the jobs created under load, chosen so that they wait in the queue (they have
  // priority -1, so they shrink nobody); empty: the largest device of the training jobs' kind.
  std::string queued_quota;
};

// Runs the benchmark; the report is a JSON object (docs/operations.md, "Load"). Progress lines
// go to `log`. Errors: the setup failed (server unreachable, a job did not start); whatever was
// created is cancelled before returning.
absl::StatusOr<Json> RunLoad(const LoadOptions& options, std::ostream& log);

// The human summary of a report (a few lines per section).
std::string FormatSummary(const Json& report);

}  // namespace slim::load
