// slimd: parses flags (and an optional config file) into options, builds the store, the job
// manager and the gRPC server, waits for SIGINT/SIGTERM, and shuts down in two phases
// (docs/service.md). Nothing else happens here.
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/time.h"
#include "base/byte_size.h"
#include "base/errors.h"
#include "base/yaml.h"
#include "server/api/executor.h"
#include "server/api/slim_service.h"
#include "server/auth/tls_files.h"
#include "server/auth/token_authenticator.h"
#include "server/jobs/job_manager.h"
#include "server/jobs/postgres_store.h"
#include "server/jobs/sqlite_store.h"
#include "server/metrics/http_server.h"
#include "server/metrics/rpc_metrics_interceptor.h"
#include "server/metrics/service_metrics.h"
#include "server/metrics/status_page.h"
#include "server/supervise/device_setup.h"
#include "base/flags.h"

namespace {

namespace fs = std::filesystem;

constexpr char kUsage[] = R"(usage: slimd [flags]

flags (each may also be a key of the --config file, e.g. `data_dir: /var/lib/slim`; flags win):
  --config FILE           YAML or JSON file with any of the keys below (dashes or underscores)
  --listen ADDR           gRPC address (default 127.0.0.1:50051; port 0 picks a free one;
                          unix:/path/to/socket for a unix domain socket)
  --data-dir DIR          jobs, datasets, models and the SQLite store (default ./slimd-data)
  --database-url URL      keep jobs, events and records in PostgreSQL instead of SQLite: a libpq
                          URL or key=value string, e.g. postgresql://slim@db:5432/slim. Several
                          slimd on one database and one shared --data-dir form a fleet
  --replica-id ID         with --database-url: this replica's name, unique among live replicas
                          (A-Z a-z 0-9 . _ -, at most 63; default HOSTNAME-PID)
  --lease-seconds S       with --database-url: how long a replica's claim on a job lasts without
                          renewal; its jobs move to other replicas this long after it dies
                          (default 15, at least 1)
  --metrics-address ADDR  HTTP address of /metrics (Prometheus) and the status page at /
                          (default 127.0.0.1:9464; port 0 picks a free one; "off" disables)
  --metrics-web-config FILE  TLS and basic authentication for the metrics address, in the
                          format of Prometheus' web configuration (docs/observability.md)
  --metrics-request-deadline S  a request to the metrics address that takes this long ends its
                          connection, however slowly its client sends or reads (default 30)
  --devices LIST          devices the scheduler packs jobs onto, comma-separated:
                            cpu:SIZE        a CPU "device" with SIZE of memory to commit (e.g.
                                            cpu:4GiB,cpu:4GiB declares two)
                            cuda:N[:SIZE]   GPU N, with all of its memory or SIZE
                          default: what is discovered (one CPU device with half the RAM, every
                          CUDA GPU with 95% of its memory)
  --worker-binary PATH    slim-train (default: next to slimd, or ../tools/slim-train)
  --worker-footprint auto|SIZE  memory each worker process uses beyond its quota, committed
                          beside it on its device: auto (default) measures it at start, once
                          per GPU and once for the CPU devices (slim-train footprint); SIZE
                          sets it for every device; 0 counts quotas only
  --checkpoint-every N    checkpoint cadence for specs that leave it at 0 (default 50)
  --checkpoint-retention D  delete the checkpoints of jobs that ended longer than D ago (e.g.
                          7d, 36h, 90m; default 0: keep them until the job is deleted); records,
                          logs and output models stay
  --max-retries N         restarts of a crashed worker from its last checkpoint (default 2)
  --cancel-grace S        seconds between SIGTERM and SIGKILL for a worker (default 30)
  --worker-nice N         workers run N niceness steps below slimd, 0..19 (default 10), so that
                          RPCs are answered promptly while workers keep the cores busy
  --worker-cpu-threads N  cores divided among the CPU workers' BLAS thread pools, each worker
                          getting its share as jobs start and end (default 0: the cores slimd
                          may use, after CPU affinity and a cgroup CPU limit; -1: leave every
                          worker's BLAS at its default, all cores)
  --max-dataset-size SIZE largest dataset upload (default 1GiB)
  --generate-quota SIZE   device memory reserved (and capped) for each Generate's sampling
                          process (default 0: the model file's size × 2 + 16 MiB)
  --executor-threads N    threads for planning, model loading and generation (default 2)
  --port-file FILE        write the port actually bound here once serving
  --tokens-file FILE      bearer tokens (SHA-256 digests with tenant and role, docs/security.md);
                          required unless --listen is a loopback or unix-socket address
  --tls-cert FILE         serve gRPC over TLS with this PEM certificate chain ...
  --tls-key FILE          ... and this PEM private key
  --tls-client-ca FILE    with TLS: require client certificates signed by this CA
  --tenant-max-jobs N     per tenant (user tokens): queued and running jobs (default 0: none)
  --tenant-max-quota SIZE per tenant: sum of their jobs' memory quotas, × workers (default 0: none)
  --tenant-max-calls N    per tenant: plan, create, import and generate calls in progress or
                          waiting for the executor (default 0: none)
  --tenant-max-dataset-storage SIZE   per tenant: total dataset size (default 0: none)

SIGINT/SIGTERM: stop accepting jobs, checkpoint and stop workers (their jobs resume on the next
start), finish streams, exit 0.
)";

struct Options {
  std::string listen = "127.0.0.1:50051";
  std::string tokens_file, tls_cert, tls_key, tls_client_ca;
  std::string metrics_address = "127.0.0.1:9464";
  std::string metrics_web_config;
  int metrics_request_deadline = 30;
  std::string port_file;
  int executor_threads = 2;
  std::string database_url;  // empty: SQLite in the data directory
  slim::server::JobManagerOptions manager;
};

std::string DefaultWorkerBinary() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (const fs::path& candidate : {self / "slim-train", self / ".." / "tools" / "slim-train"}) {
    if (fs::exists(candidate, ec)) return fs::weakly_canonical(candidate, ec).string();
  }
  return "slim-train";
}

// HOSTNAME-PID in the replica id alphabet: unique on a machine, and stable across restarts in
// a container (where slimd is pid 1 and the hostname is the pod's).
std::string DefaultReplicaId() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::snprintf(host, sizeof(host), "slimd");
  std::string id;
  for (const char* c = host; *c != '\0'; ++c) {
    id += std::isalnum(static_cast<unsigned char>(*c)) || *c == '.' || *c == '_' || *c == '-' ? *c : '_';
  }
  const std::string pid = "-" + std::to_string(::getpid());
  return id.substr(0, 63 - pid.size()) + pid;
}

// --checkpoint-retention: 0 (keep), or a duration with a unit: d (days), or absl's h, m, s.
double ParseRetention(const std::string& text) {
  if (text == "0") return 0;
  absl::Duration d;
  bool ok = false;
  if (!text.empty() && text.back() == 'd') {
    double days = 0;
    ok = absl::SimpleAtod(text.substr(0, text.size() - 1), &days) && days >= 0;
    d = absl::Hours(24 * days);
  } else {
    ok = absl::ParseDuration(text, &d);
  }
  if (!ok || d < absl::ZeroDuration()) {
    throw slim::EngineError(slim::ErrorCode::kInvalidArgument,
                            "--checkpoint-retention: '" + text + "' is not a duration (e.g. 7d, 36h, 90m, or 0)");
  }
  return absl::ToDoubleSeconds(d);
}

// Config file keys become flags placed before the command line's, so the command line wins.
std::vector<std::string> ConfigArgs(const std::string& path) {
  slim::Json doc;
  try {
    doc = slim::ParseStructuredFile(path);
  } catch (const std::runtime_error& e) {
    throw slim::EngineError(slim::ErrorCode::kInvalidArgument, std::string("--config ") + e.what());
  }
  slim::CheckArgument(doc.kind == slim::Json::kObject, "--config " + path + ": must be a mapping");
  std::vector<std::string> args;
  for (const auto& [key, value] : doc.members) {
    std::string name = key;
    for (char& c : name) c = c == '_' ? '-' : c;
    std::string text;
    if (value.kind == slim::Json::kArray) {
      for (const slim::Json& item : value.items) text += (text.empty() ? "" : ",") + (item.kind == slim::Json::kString ? item.text : slim::SerializeJson(item));
    } else {
      text = value.kind == slim::Json::kString ? value.text : slim::SerializeJson(value);
    }
    args.push_back("--" + name + "=" + text);
  }
  return args;
}

Options ParseOptions(int argc, char** argv) {
  std::vector<std::string> args = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--config" && i + 1 < argc) {
      const std::vector<std::string> config = ConfigArgs(argv[i + 1]);
      args.insert(args.begin() + 1, config.begin(), config.end());
    } else if (std::string(argv[i]).rfind("--config=", 0) == 0) {
      const std::vector<std::string> config = ConfigArgs(std::string(argv[i]).substr(9));
      args.insert(args.begin() + 1, config.begin(), config.end());
    }
  }
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  std::vector<char*> pointers;
  for (std::string& a : args) pointers.push_back(a.data());
  const slim::tools::Flags flags(static_cast<int>(pointers.size()), pointers.data());
  if (flags.Bool("help")) {
    std::cout << kUsage;
    std::exit(0);
  }
  Options o;
  if (flags.Has("config")) flags.String("config", "");  // read above
  o.listen = flags.String("listen", o.listen);
  o.metrics_address = flags.String("metrics-address", o.metrics_address);
  if (flags.Has("metrics-web-config")) o.metrics_web_config = flags.String("metrics-web-config", "");
  const int64_t deadline = flags.Int("metrics-request-deadline", 30, 1);
  slim::CheckArgument(deadline <= 3600, "--metrics-request-deadline: must be in [1, 3600] seconds");
  o.metrics_request_deadline = static_cast<int>(deadline);
  if (flags.Has("tokens-file")) o.tokens_file = flags.String("tokens-file", "");
  if (flags.Has("tls-cert")) o.tls_cert = flags.String("tls-cert", "");
  if (flags.Has("tls-key")) o.tls_key = flags.String("tls-key", "");
  if (flags.Has("tls-client-ca")) o.tls_client_ca = flags.String("tls-client-ca", "");
  o.port_file = flags.Has("port-file") ? flags.String("port-file", "") : "";
  if (flags.Has("database-url")) o.database_url = flags.String("database-url", "");
  slim::CheckArgument(o.database_url.empty() ? !flags.Has("replica-id") && !flags.Has("lease-seconds") : true,
                      "--replica-id and --lease-seconds: need --database-url (replicas share a PostgreSQL store)");
  if (!o.database_url.empty()) {
    o.manager.replica_id = flags.Has("replica-id") ? flags.String("replica-id", "") : DefaultReplicaId();
    o.manager.lease_seconds = flags.Double("lease-seconds", 15);
    slim::CheckArgument(o.manager.lease_seconds >= 1, "--lease-seconds: must be >= 1");
  }
  o.executor_threads = static_cast<int>(flags.Int("executor-threads", 2, 1));
  o.manager.data_dir = fs::absolute(flags.String("data-dir", "slimd-data")).string();
  o.manager.worker_binary = flags.Has("worker-binary") ? flags.String("worker-binary", "") : DefaultWorkerBinary();
  const std::string devices = flags.Has("devices") ? flags.String("devices", "") : "";
  o.manager.checkpoint_every = static_cast<int>(flags.Int("checkpoint-every", 50, 1));
  o.manager.checkpoint_retention_seconds = ParseRetention(flags.String("checkpoint-retention", "0"));
  o.manager.max_retries = static_cast<int>(flags.Int("max-retries", 2, 0));
  o.manager.cancel_grace_seconds = flags.Double("cancel-grace", 30);
  o.manager.worker_nice = static_cast<int>(flags.Int("worker-nice", 10, 0));
  slim::CheckArgument(o.manager.worker_nice <= 19, "--worker-nice: must be in [0, 19]");
  o.manager.worker_cpu_threads = static_cast<int>(flags.Int("worker-cpu-threads", 0, -1));
  slim::CheckArgument(o.manager.worker_cpu_threads <= 4096, "--worker-cpu-threads: must be in [-1, 4096]");
  o.manager.max_dataset_bytes = flags.Has("max-dataset-size") ? flags.Bytes("max-dataset-size", -1) : int64_t{1} << 30;
  o.manager.tenant_max_jobs = static_cast<int>(flags.Int("tenant-max-jobs", 0, 0));
  o.manager.tenant_max_quota_bytes = flags.Has("tenant-max-quota") ? flags.Bytes("tenant-max-quota", -1) : 0;
  o.manager.tenant_max_calls = static_cast<int>(flags.Int("tenant-max-calls", 0, 0));
  o.manager.generate_quota_bytes = flags.Has("generate-quota") ? flags.Bytes("generate-quota", -1) : 0;
  o.manager.tenant_max_dataset_bytes =
      flags.Has("tenant-max-dataset-storage") ? flags.Bytes("tenant-max-dataset-storage", -1) : 0;
  const std::string footprint = flags.Has("worker-footprint") ? flags.String("worker-footprint", "") : "auto";
  flags.CheckAllUsed();
  slim::CheckArgument(o.tls_cert.empty() == o.tls_key.empty(), "--tls-cert and --tls-key: give both or neither");
  slim::CheckArgument(o.tls_client_ca.empty() || !o.tls_cert.empty(), "--tls-client-ca: needs --tls-cert and --tls-key");
  slim::CheckArgument(o.manager.cancel_grace_seconds >= 0, "--cancel-grace: must be >= 0");
  slim::CheckArgument(o.metrics_web_config.empty() || o.metrics_address != "off",
                      "--metrics-web-config: needs a --metrics-address");
  // Admission and the workers plan from the same calibration, or a worker could measure its
  // own and pick another chunk size: both are given this directory (--calibration-cache).
  o.manager.calibration_cache_dir = o.manager.data_dir + "/calibration";
  o.manager.devices = slim::server::SetUpDevices(devices, footprint, o.manager.worker_binary, o.manager.data_dir);
  return o;
}

// Loopback TCP or a unix socket: reachable only from this machine.
bool LocalOnly(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return true;
  const std::string host = address.substr(0, address.rfind(':'));
  return host.rfind("127.", 0) == 0 || host == "localhost" || host == "[::1]" || host == "::1";
}

// The store: PostgreSQL with --database-url, else SQLite in the data directory.
absl::StatusOr<std::unique_ptr<slim::server::Store>> OpenStore(const Options& o) {
  if (!o.database_url.empty()) {
    slim::server::PostgresStoreOptions options;
    options.replica_id = o.manager.replica_id;
    absl::StatusOr<std::unique_ptr<slim::server::PostgresStore>> store =
        slim::server::PostgresStore::Open(o.database_url, options);
    if (!store.ok()) {
      return absl::Status(store.status().code(), "--database-url: " + std::string(store.status().message()));
    }
    return std::unique_ptr<slim::server::Store>(*std::move(store));
  }
  absl::StatusOr<std::unique_ptr<slim::server::SqliteStore>> store =
      slim::server::SqliteStore::Open(o.manager.data_dir + "/slimd.db");
  if (!store.ok()) return store.status();
  return std::unique_ptr<slim::server::Store>(*std::move(store));
}


int Serve(const Options& o) {
  // Signals are taken by sigwait below; blocked before any thread exists so none receives them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a dead worker's control pipe must not kill the server
  // Past a file-size limit (RLIMIT_FSIZE) writes fail with EFBIG and are reported like a full
  // disk, instead of the kernel killing slimd in the middle of a write.
  std::signal(SIGXFSZ, SIG_IGN);
  // The registry outlives every component holding metric references: built first.
  slim::server::ServiceMetrics metrics;

  fs::create_directories(o.manager.data_dir);
  absl::StatusOr<std::unique_ptr<slim::server::Store>> store = OpenStore(o);
  if (!store.ok()) {
    std::fprintf(stderr, "slimd: %s\n", store.status().ToString().c_str());
    return 1;
  }
  slim::server::JobManager manager(**store, o.manager, &metrics);
  if (const absl::Status started = manager.Start(); !started.ok()) {
    std::fprintf(stderr, "slimd: %s\n", started.ToString().c_str());
    return 1;
  }
  std::unique_ptr<slim::server::TokenAuthenticator> auth;
  if (o.tokens_file.empty()) {
    if (!LocalOnly(o.listen)) {
      std::fprintf(stderr, "slimd: --tokens-file is required when listening on %s (not loopback)\n", o.listen.c_str());
      manager.Shutdown();
      return 2;
    }
    auth = slim::server::TokenAuthenticator::AllowAll();
    std::printf("slimd: no --tokens-file: every client on this machine is admitted as admin (loopback only)\n");
  } else {
    absl::StatusOr<std::unique_ptr<slim::server::TokenAuthenticator>> loaded =
        slim::server::TokenAuthenticator::FromFile(o.tokens_file);
    if (!loaded.ok()) {
      std::fprintf(stderr, "slimd: %s\n", std::string(loaded.status().message()).c_str());
      manager.Shutdown();
      return 2;
    }
    auth = *std::move(loaded);
  }
  // Declared after the manager it renders from, so it stops before the manager goes.
  std::unique_ptr<slim::server::MetricsHttpServer> http;
  if (o.metrics_address != "off") {
    slim::server::MetricsHttpOptions http_options;
    http_options.address = o.metrics_address;
    http_options.request_deadline_seconds = o.metrics_request_deadline;
    if (!o.metrics_web_config.empty()) {
      absl::StatusOr<slim::server::WebConfig> web = slim::server::ReadWebConfig(o.metrics_web_config);
      slim::CheckArgument(web.ok(), "--metrics-web-config: " + std::string(web.status().message()));
      http_options.web = *std::move(web);
    }
    absl::StatusOr<std::unique_ptr<slim::server::MetricsHttpServer>> started =
        slim::server::MetricsHttpServer::Start(
            http_options, metrics.registry(), [&manager, replica = o.manager.replica_id] {
              return slim::server::RenderStatusPage(manager.ListDevices(), manager.FleetDevices(), manager.JobsForStatus(20),
                                                    replica);
            });
    if (!started.ok()) {
      std::fprintf(stderr, "slimd: %s\n", std::string(started.status().message()).c_str());
      manager.Shutdown();
      return 2;
    }
    http = *std::move(started);
  }
  slim::server::Executor executor(o.executor_threads);
  slim::server::SlimService service(manager, executor, *auth);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!o.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl(o.tls_client_ca.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    absl::StatusOr<slim::server::TlsFiles> tls = slim::server::ReadTlsFiles(o.tls_cert, o.tls_key, o.tls_client_ca);
    slim::CheckArgument(tls.ok(), std::string(tls.status().message()));
    ssl.pem_key_cert_pairs.push_back({tls->private_key_pem, tls->cert_chain_pem});
    if (!o.tls_client_ca.empty()) ssl.pem_root_certs = tls->client_ca_pem;
    credentials = grpc::SslServerCredentials(ssl);
  }
  builder.AddListeningPort(o.listen, credentials, &port);
  builder.RegisterService(&service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<slim::server::RpcMetricsInterceptorFactory>(metrics));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.SetMaxReceiveMessageSize(8 << 20);
  // slimctl pings every 20 s during long watches to notice a lost connection; allow it.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "slimd: cannot listen on %s\n", o.listen.c_str());
    manager.Shutdown();
    return 1;
  }
  // A unix socket ("unix:/path") has no port to report.
  const std::string address =
      o.listen.rfind("unix:", 0) == 0 ? o.listen : o.listen.substr(0, o.listen.rfind(':')) + ":" + std::to_string(port);
  std::printf("slimd: listening on %s%s, data in %s, %zu device(s):", address.c_str(), o.tls_cert.empty() ? "" : " (TLS)",
              o.manager.data_dir.c_str(),
              o.manager.devices.size());
  for (const auto& d : o.manager.devices) {
    std::printf(" %s (%s", d.name.c_str(), slim::FormatBytes(d.capacity_bytes).c_str());
    if (d.worker_footprint_bytes > 0) std::printf(", worker footprint %s", slim::FormatBytes(d.worker_footprint_bytes).c_str());
    std::printf(")");
  }
  std::printf("\n");
  if (!o.manager.replica_id.empty()) {
    std::printf("slimd: replica %s (lease %g s) of the fleet on this database\n", o.manager.replica_id.c_str(),
                o.manager.lease_seconds);
  }
  std::fflush(stdout);
  if (http != nullptr) {
    const std::string host = o.metrics_address.substr(0, o.metrics_address.rfind(':'));
    const char* scheme = http->tls() ? "https" : "http";
    std::printf("slimd: metrics on %s://%s:%d/metrics, status page on %s://%s:%d/\n", scheme, host.c_str(),
                http->port(), scheme, host.c_str(), http->port());
    std::fflush(stdout);
  }
  if (!o.port_file.empty()) {
    std::ofstream(o.port_file + ".tmp") << port << "\n";
    fs::rename(o.port_file + ".tmp", o.port_file);
  }

  // Until a signal: health follows the store, NOT_SERVING while writes to it fail.
  int signal_number = -1;
  bool serving = true;
  while (signal_number < 0) {
    const timespec tick{1, 0};
    signal_number = sigtimedwait(&signals, nullptr, &tick);
    const bool writable = manager.store_error().empty();
    if (writable != serving) {
      server->GetHealthCheckService()->SetServingStatus(writable);
      serving = writable;
    }
  }
  std::printf("slimd: signal %d, shutting down\n", signal_number);
  std::fflush(stdout);
  const auto shutdown_start = std::chrono::steady_clock::now();
  server->GetHealthCheckService()->SetServingStatus(false);
  // Refuses new jobs, checkpoints and stops workers (at most --cancel-grace + 10 s), then ends
  // every WatchJob stream with UNAVAILABLE once its last event is written.
  manager.Shutdown();
  // What is still open after 5 s (uploads, generations) is cancelled.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  executor.Shutdown();
  http.reset();
  std::printf("slimd: stopped (shutdown took %.1f s)\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - shutdown_start).count());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Serve(ParseOptions(argc, argv));
  } catch (const slim::EngineError& e) {
    std::fprintf(stderr, "slimd: %s\nrun 'slimd --help' for usage\n", e.what());
    return 2;
  }
}
