// What every slimctl command shares: how to reach the server (flags, environment, config file),
// how results are printed (human tables, JSON, YAML), sizes and times for people, and one
// mapping from gRPC status codes to exit statuses (docs/slimctl.md).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "slim/v1/slim.grpc.pb.h"
#include "base/flags.h"

namespace slim::client {

// Exit statuses (documented in docs/slimctl.md and `slimctl --help`).
enum ExitStatus {
  kExitOk = 0,
  kExitError = 1,              // internal or unknown error
  kExitUsage = 2,              // bad flags or arguments, INVALID_ARGUMENT
  kExitQuota = 3,              // RESOURCE_EXHAUSTED: the quota cannot fit the job
  kExitNotFound = 4,           // NOT_FOUND
  kExitConflict = 5,           // FAILED_PRECONDITION, ALREADY_EXISTS
  kExitUnavailable = 6,        // the server cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED)
  kExitDenied = 7,             // UNAUTHENTICATED, PERMISSION_DENIED
  kExitJobFailed = 8,          // watch / submit --watch: the job ended FAILED
  kExitJobCancelled = 9,       // watch / submit --watch: the job ended CANCELLED
};

int ExitStatusFor(const grpc::Status& status);

// Connection settings, from (highest first) flags, environment (SLIM_SERVER, SLIM_TOKEN,
// SLIM_TLS=1, SLIM_CA_CERT), the config file ($SLIM_CONFIG or ~/.config/slim/slimctl.yaml with
// keys server, token, tls, ca_cert), then defaults (127.0.0.1:50051, plaintext).
struct Connection {
  std::string server = "127.0.0.1:50051";
  std::string token;      // sent as "authorization: Bearer <token>"
  bool tls = false;
  std::string ca_cert;    // PEM file for TLS; empty = system roots
  double timeout_seconds = 60;  // deadline of unary calls
  // Deadline of calls that may calibrate the planner for a new model shape first (submit, plan,
  // models import): seconds to minutes on a busy CPU. --timeout sets both.
  double slow_timeout_seconds = 600;
};
Connection ResolveConnection(const tools::Flags& flags);

// A channel and stub for `connection`, and client contexts with its deadline and token.
class Client {
 public:
  explicit Client(const Connection& connection);
  v1::Slim::Stub& stub() { return *stub_; }
  // A context for a unary call (the connection's deadline) or a stream (no deadline).
  std::unique_ptr<grpc::ClientContext> UnaryContext() const;
  std::unique_ptr<grpc::ClientContext> SlowUnaryContext() const;  // slow_timeout_seconds
  std::unique_ptr<grpc::ClientContext> StreamContext() const;
  const Connection& connection() const { return connection_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  Connection connection_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Slim::Stub> stub_;
};

// --output (kubectl's -o): a table, a wide table (more columns), a document (JSON or YAML, every
// field), or names (the ids of the resources printed, one per line, for scripts:
// `slimctl list --state failed -o name | xargs -n1 slimctl jobs delete`). Ids carry their kind
// ("job-000001", "ds-000001", "model-000001") and every command takes them as printed.
enum class OutputFormat { kTable, kWide, kJson, kYaml, kName };
OutputFormat ParseOutputFormat(const tools::Flags& flags);
inline bool IsTable(OutputFormat f) { return f == OutputFormat::kTable || f == OutputFormat::kWide; }
inline bool IsDocument(OutputFormat f) { return f == OutputFormat::kJson || f == OutputFormat::kYaml; }

// A message as JSON (field names as in the .proto, every field printed) or YAML.
std::string ToJson(const google::protobuf::Message& message, bool compact = false);
std::string ToYaml(const google::protobuf::Message& message);
// Prints `message` as JSON or YAML (for kTable, the caller prints its own view).
void PrintStructured(const google::protobuf::Message& message, OutputFormat format);
// Streams (watch, submit --watch) with --output json: one object per line, each naming its job,
// {"job_id": "job-000001", "<key>": <message>}; for scripts and `jq -c`.
void PrintJsonLine(const std::string& job_id, const std::string& key, const google::protobuf::Message& message);

// Columns padded to their widest cell; the first row is the header. On a terminal the widest
// columns but the first are narrowed (cells cut with "…", never below 8 characters) until rows
// fit its width.
void PrintTable(const std::vector<std::vector<std::string>>& rows);

// The terminal's width when stdout is one (its size, else $COLUMNS); 0 when not a terminal or
// unknown: output to pipes and files is never cut.
int TerminalColumns();
// Colour only on a terminal, and never with NO_COLOR set (https://no-color.org) or TERM=dumb.
bool UseColour();
// Characters a terminal shows for `text` (colour sequences and UTF-8 continuation bytes not
// counted), and `text` cut to `width` of them with a trailing "…" (coloured text is left whole).
size_t VisibleWidth(const std::string& text);
std::string FitWidth(const std::string& text, size_t width);

// "3m ago", "2h ago", "5d ago"; "-" for an unset timestamp.
std::string Age(const google::protobuf::Timestamp& t);
// "2026-11-28 20:55:30 UTC"; "-" for unset.
std::string AbsoluteTime(const google::protobuf::Timestamp& t);
// "1h02m", "4m10s", "12s".
std::string Duration(double seconds);
std::string StateName(v1::JobState state);  // "RUNNING"
// StateName for a table cell: coloured by state when UseColour().
std::string StateCell(v1::JobState state);

// Prints "slimctl: <server's message>" on stderr and returns the exit status for it.
int ReportError(const grpc::Status& status, const std::string& what);

}  // namespace slim::client
