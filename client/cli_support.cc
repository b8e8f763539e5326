#include "client/cli_support.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>

#include "base/errors.h"
#include "base/json.h"
#include "base/yaml.h"
#include "google/protobuf/util/json_util.h"

namespace slim::client {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot read file");
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// YAML for a JSON tree: block mappings and sequences, scalars quoted when YAML would read them
// as something else.
void EmitYaml(const Json& v, int indent, std::string* out);

std::string YamlScalar(const Json& v) {
  switch (v.kind) {
    case Json::kNull: return "null";
    case Json::kBool: return v.boolean ? "true" : "false";
    case Json::kNumber: return SerializeJson(v);
    case Json::kString: {
      const std::string& s = v.text;
      bool plain = !s.empty() && s.find_first_of(":#{}[],&*!|>'\"%@`\n\r") == std::string::npos && s.front() != ' ' &&
                   s.back() != ' ' && s.front() != '-' && s.front() != '?';
      if (plain) {
        // Strings that would read back as another type, or not read back at all (a leading
        // tab), are quoted.
        try {
          const Json reread = ParseYaml(s);
          plain = reread.kind == Json::kString && reread.text == s;
        } catch (const EngineError&) {
          plain = false;
        }
      }
      return plain ? s : "\"" + JsonEscape(s) + "\"";
    }
    default: return "";
  }
}

void EmitYaml(const Json& v, int indent, std::string* out) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  if (v.kind == Json::kObject) {
    if (v.members.empty()) {
      *out += pad + "{}\n";
      return;
    }
    for (const auto& [key, member] : v.members) {
      const bool nested = (member.kind == Json::kObject && !member.members.empty()) ||
                          (member.kind == Json::kArray && !member.items.empty());
      if (nested) {
        *out += pad + key + ":\n";
        EmitYaml(member, indent + 2, out);
      } else if (member.kind == Json::kObject) {
        *out += pad + key + ": {}\n";
      } else if (member.kind == Json::kArray) {
        *out += pad + key + ": []\n";
      } else {
        *out += pad + key + ": " + YamlScalar(member) + "\n";
      }
    }
  } else if (v.kind == Json::kArray) {
    for (const Json& item : v.items) {
      if (item.kind == Json::kObject || item.kind == Json::kArray) {
        std::string inner;
        EmitYaml(item, indent + 2, &inner);
        // "- " replaces the first line's indentation.
        *out += pad + "- " + inner.substr(static_cast<size_t>(indent) + 2);
      } else {
        *out += pad + "- " + YamlScalar(item) + "\n";
      }
    }
  } else {
    *out += pad + YamlScalar(v) + "\n";
  }
}

}  // namespace

int ExitStatusFor(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::OK: return kExitOk;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE: return kExitUsage;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return kExitQuota;
    case grpc::StatusCode::NOT_FOUND: return kExitNotFound;
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::ALREADY_EXISTS: return kExitConflict;
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED: return kExitUnavailable;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED: return kExitDenied;
    default: return kExitError;
  }
}

Connection ResolveConnection(const tools::Flags& flags) {
  Connection c;
  // Config file, then environment, then flags: each later source overrides.
  const std::string home = Env("HOME");
  const std::string config_path =
      !Env("SLIM_CONFIG").empty() ? Env("SLIM_CONFIG") : (home.empty() ? "" : home + "/.config/slim/slimctl.yaml");
  if (!config_path.empty() && std::ifstream(config_path).good()) {
    Json doc;
    try {
      doc = ParseStructuredFile(config_path);
    } catch (const std::runtime_error& e) {
      throw EngineError(ErrorCode::kInvalidArgument, std::string("config ") + e.what());
    }
    for (const auto& [key, value] : doc.members) {
      if (key == "server" && value.kind == Json::kString) c.server = value.text;
      else if (key == "token" && value.kind == Json::kString) c.token = value.text;
      else if (key == "tls" && value.kind == Json::kBool) c.tls = value.boolean;
      else if (key == "ca_cert" && value.kind == Json::kString) c.ca_cert = value.text;
      else throw EngineError(ErrorCode::kInvalidArgument, config_path + ": unknown or malformed key '" + key + "'");
    }
  }
  if (!Env("SLIM_SERVER").empty()) c.server = Env("SLIM_SERVER");
  if (!Env("SLIM_TOKEN").empty()) c.token = Env("SLIM_TOKEN");
  if (Env("SLIM_TLS") == "1" || Env("SLIM_TLS") == "true") c.tls = true;
  if (!Env("SLIM_CA_CERT").empty()) c.ca_cert = Env("SLIM_CA_CERT");
  c.server = flags.String("server", c.server);
  if (flags.Has("token")) c.token = flags.String("token", "");
  if (flags.Has("tls")) c.tls = flags.Bool("tls");
  if (flags.Has("ca-cert")) c.ca_cert = flags.String("ca-cert", "");
  if (flags.Has("timeout")) c.timeout_seconds = c.slow_timeout_seconds = flags.Double("timeout", c.timeout_seconds);
  CheckArgument(c.timeout_seconds > 0, "--timeout: must be > 0");
  if (!c.ca_cert.empty()) c.tls = true;
  return c;
}

Client::Client(const Connection& connection) : connection_(connection) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (connection.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!connection.ca_cert.empty()) ssl.pem_root_certs = ReadFile(connection.ca_cert);
    credentials = grpc::SslCredentials(ssl);
  }
  // Keepalive pings notice a server that vanished without closing the connection (host or
  // network loss), so a watch fails and reconnects instead of waiting forever.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  channel_ = grpc::CreateCustomChannel(connection.server, credentials, args);
  stub_ = v1::Slim::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::UnaryContext() const {
  std::unique_ptr<grpc::ClientContext> context = StreamContext();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(connection_.timeout_seconds * 1000)));
  return context;
}

std::unique_ptr<grpc::ClientContext> Client::SlowUnaryContext() const {
  std::unique_ptr<grpc::ClientContext> context = StreamContext();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(connection_.slow_timeout_seconds * 1000)));
  return context;
}

std::unique_ptr<grpc::ClientContext> Client::StreamContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!connection_.token.empty()) context->AddMetadata("authorization", "Bearer " + connection_.token);
  return context;
}

OutputFormat ParseOutputFormat(const tools::Flags& flags) {
  const std::string name = flags.String("output", "table");
  if (name == "table") return OutputFormat::kTable;
  if (name == "wide") return OutputFormat::kWide;
  if (name == "json") return OutputFormat::kJson;
  if (name == "yaml") return OutputFormat::kYaml;
  if (name == "name") return OutputFormat::kName;
  throw EngineError(ErrorCode::kInvalidArgument,
                    "--output: unknown format '" + name + "' (allowed: table, wide, json, yaml, name)");
}

std::string ToJson(const google::protobuf::Message& message, bool compact) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  options.add_whitespace = !compact;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

void PrintJsonLine(const std::string& job_id, const std::string& key, const google::protobuf::Message& message) {
  std::printf("{\"job_id\":\"%s\",\"%s\":%s}\n", JsonEscape(job_id).c_str(), key.c_str(),
              ToJson(message, /*compact=*/true).c_str());
  std::fflush(stdout);
}

std::string ToYaml(const google::protobuf::Message& message) {
  std::string out;
  EmitYaml(ParseJson(ToJson(message)), 0, &out);
  return out;
}

void PrintStructured(const google::protobuf::Message& message, OutputFormat format) {
  if (format == OutputFormat::kJson) std::cout << ToJson(message);
  if (format == OutputFormat::kYaml) std::cout << ToYaml(message);
  std::cout.flush();
}

int TerminalColumns() {
  if (::isatty(STDOUT_FILENO) == 0) return 0;
  winsize size{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
  const char* columns = std::getenv("COLUMNS");
  return columns != nullptr ? std::max(0, std::atoi(columns)) : 0;
}

bool UseColour() {
  const char* no_colour = std::getenv("NO_COLOR");  // https://no-color.org: set and non-empty
  const char* term = std::getenv("TERM");
  return ::isatty(STDOUT_FILENO) != 0 && (no_colour == nullptr || *no_colour == '\0') &&
         (term == nullptr || std::string(term) != "dumb");
}

size_t VisibleWidth(const std::string& text) {
  size_t width = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\033' && i + 1 < text.size() && text[i + 1] == '[') {  // a colour: ESC [ ... m
      while (i < text.size() && text[i] != 'm') ++i;
      continue;
    }
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++width;  // not a UTF-8 continuation
  }
  return width;
}

std::string FitWidth(const std::string& text, size_t width) {
  if (VisibleWidth(text) <= width || text.find('\033') != std::string::npos) return text;
  std::string out;
  size_t shown = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool starts_character = (static_cast<unsigned char>(text[i]) & 0xC0) != 0x80;
    if (starts_character && ++shown > width - 1) break;
    out += text[i];
  }
  return out + "\u2026";  // …
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], VisibleWidth(row[i]));
  }
  // On a terminal, narrow the widest columns (never the first, the ids; never below 8) until a
  // row fits its width.
  if (const int columns = TerminalColumns(); columns > 0 && widths.size() > 1) {
    size_t total = 2 * (widths.size() - 1);
    for (size_t w : widths) total += w;
    while (total > static_cast<size_t>(columns)) {
      const auto widest = std::max_element(widths.begin() + 1, widths.end());
      if (*widest <= 8) break;
      --*widest;
      --total;
    }
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      const std::string cell = FitWidth(row[i], widths[i]);
      line += cell;
      if (i + 1 < row.size()) line += std::string(widths[i] - std::min(widths[i], VisibleWidth(cell)) + 2, ' ');
    }
    std::cout << line << "\n";
  }
  std::cout.flush();
}

std::string Age(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  const int64_t s = std::max<int64_t>(0, now - t.seconds());
  if (s < 60) return std::to_string(s) + "s ago";
  if (s < 3600) return std::to_string(s / 60) + "m ago";
  if (s < 86400) return std::to_string(s / 3600) + "h ago";
  return std::to_string(s / 86400) + "d ago";
}

std::string AbsoluteTime(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0) return "-";
  const std::time_t seconds = static_cast<std::time_t>(t.seconds());
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  } else if (s >= 60) {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%llds", static_cast<long long>(s));
  }
  return buf;
}

std::string StateName(v1::JobState state) {
  const std::string name = v1::JobState_Name(state);
  const std::string prefix = "JOB_STATE_";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

std::string StateCell(v1::JobState state) {
  const std::string name = StateName(state);
  if (!UseColour()) return name;
  const char* colour = "";
  switch (state) {
    case v1::JOB_STATE_RUNNING: colour = "\033[36m"; break;  // cyan
    case v1::JOB_STATE_SUCCEEDED: colour = "\033[32m"; break;  // green
    case v1::JOB_STATE_FAILED: colour = "\033[31m"; break;  // red
    case v1::JOB_STATE_CANCELLING:
    case v1::JOB_STATE_CANCELLED: colour = "\033[33m"; break;  // yellow
    default: return name;
  }
  return colour + name + "\033[0m";
}

int ReportError(const grpc::Status& status, const std::string& what) {
  std::string message = status.error_message();
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    message = "cannot reach the server (" + message + "); is slimd running? (--server, SLIM_SERVER)";
  } else if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    message = "the server did not answer in time (--timeout)";
  }
  std::cerr << "slimctl: " << what << ": " << message << "\n";
  return ExitStatusFor(status);
}

}  // namespace slim::client
