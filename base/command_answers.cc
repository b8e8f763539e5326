#include "base/command_answers.h"

#include <cmath>
#include <stdexcept>

#include "base/errors.h"
#include "base/json.h"

namespace slim {

namespace {

[[noreturn]] void Malformed(const std::string& what, const std::string& line) {
  throw EngineError(ErrorCode::kInternal, "slim-train answered with malformed " + what + ": " + line.substr(0, 200));
}

Json ParseAnswer(const std::string& what, const std::string& line, Json::Kind kind) {
  Json doc;
  try {
    doc = ParseJson(line);
  } catch (const std::runtime_error&) {
    Malformed(what, line);
  }
  if (doc.kind != kind) Malformed(what, line);
  return doc;
}

const Json& Member(const Json& o, const std::string& key, Json::Kind kind, const std::string& what,
                   const std::string& line) {
  const auto it = o.members.find(key);
  if (it == o.members.end() || it->second.kind != kind) Malformed(what + " (" + key + ")", line);
  return it->second;
}

int64_t Integer(const Json& o, const std::string& key, const std::string& what, const std::string& line) {
  const double v = Member(o, key, Json::kNumber, what, line).number;
  if (!(v >= 0 && v <= 9.007199254740992e15) || std::floor(v) != v) Malformed(what + " (" + key + ")", line);
  return static_cast<int64_t>(v);
}

Json Number(int64_t v) { return JsonNumber(static_cast<double>(v)); }

}  // namespace

std::string AdmissionPlanToJson(const AdmissionPlan& p) {
  Json o = JsonObject();
  o.members["quota_bytes"] = Number(p.quota_bytes);
  o.members["min_quota_bytes"] = Number(p.min_quota_bytes);
  Json feasible;
  feasible.kind = Json::kBool;
  feasible.boolean = p.feasible;
  o.members["feasible"] = feasible;
  o.members["chunk_size"] = Number(p.chunk_size);
  o.members["mode"] = JsonString(StartStateModeName(p.mode));
  o.members["predicted_peak_bytes"] = Number(p.predicted_peak_bytes);
  o.members["est_step_seconds"] = JsonNumber(p.est_step_seconds);
  o.members["full_backprop_peak_bytes"] = Number(p.full_backprop_peak_bytes);
  o.members["calibration_bytes"] = Number(p.calibration_bytes);
  return SerializeJson(o);
}

AdmissionPlan AdmissionPlanFromJson(const std::string& line) {
  const std::string what = "a plan";
  const Json o = ParseAnswer(what, line, Json::kObject);
  AdmissionPlan p;
  p.quota_bytes = Integer(o, "quota_bytes", what, line);
  p.min_quota_bytes = Integer(o, "min_quota_bytes", what, line);
  p.feasible = Member(o, "feasible", Json::kBool, what, line).boolean;
  p.chunk_size = Integer(o, "chunk_size", what, line);
  try {
    p.mode = ParseStartStateMode(Member(o, "mode", Json::kString, what, line).text);
  } catch (const EngineError&) {
    Malformed(what + " (mode)", line);
  }
  p.predicted_peak_bytes = Integer(o, "predicted_peak_bytes", what, line);
  p.est_step_seconds = Member(o, "est_step_seconds", Json::kNumber, what, line).number;
  p.full_backprop_peak_bytes = Integer(o, "full_backprop_peak_bytes", what, line);
  p.calibration_bytes = Integer(o, "calibration_bytes", what, line);
  return p;
}

std::string ModelSummaryToJson(const ModelSummary& s) {
  Json config = JsonObject();
  for (const auto& [k, v] : s.config) config.members[k] = JsonString(v);
  Json o = JsonObject();
  o.members["config"] = config;
  o.members["parameters"] = Number(s.parameters);
  return SerializeJson(o);
}

ModelSummary ModelSummaryFromJson(const std::string& line) {
  const std::string what = "a model summary";
  const Json o = ParseAnswer(what, line, Json::kObject);
  ModelSummary s;
  for (const auto& [k, v] : Member(o, "config", Json::kObject, what, line).members) {
    if (v.kind != Json::kString) Malformed(what + " (config." + k + ")", line);
    s.config[k] = v.text;
  }
  s.parameters = Integer(o, "parameters", what, line);
  return s;
}

std::string DevicesToJson(const std::vector<DeviceInfo>& devices) {
  Json list = JsonArray();
  for (const DeviceInfo& d : devices) {
    Json o = JsonObject();
    o.members["name"] = JsonString(d.name);
    o.members["kind"] = JsonString(d.kind);
    o.members["description"] = JsonString(d.description);
    o.members["total_bytes"] = Number(d.total_bytes);
    o.members["free_bytes"] = Number(d.free_bytes);
    if (!d.pci_bus_id.empty()) o.members["pci_bus_id"] = JsonString(d.pci_bus_id);
    list.items.push_back(o);
  }
  return SerializeJson(list);
}

std::vector<DeviceInfo> DevicesFromJson(const std::string& line) {
  const std::string what = "a device list";
  const Json list = ParseAnswer(what, line, Json::kArray);
  std::vector<DeviceInfo> devices;
  for (const Json& o : list.items) {
    if (o.kind != Json::kObject) Malformed(what, line);
    DeviceInfo d;
    d.name = Member(o, "name", Json::kString, what, line).text;
    d.kind = Member(o, "kind", Json::kString, what, line).text;
    d.description = Member(o, "description", Json::kString, what, line).text;
    d.total_bytes = Integer(o, "total_bytes", what, line);
    d.free_bytes = Integer(o, "free_bytes", what, line);
    if (const auto bus = o.members.find("pci_bus_id"); bus != o.members.end() && bus->second.kind == Json::kString) {
      d.pci_bus_id = bus->second.text;
    }
    devices.push_back(d);
  }
  return devices;
}

std::string WorkerFootprintToJson(const WorkerFootprint& footprint) {
  Json o = JsonObject();
  o.members["device"] = JsonString(footprint.device);
  o.members["bytes"] = Number(footprint.bytes);
  o.members["method"] = JsonString(footprint.method);
  return SerializeJson(o);
}

WorkerFootprint WorkerFootprintFromJson(const std::string& line) {
  const std::string what = "a worker footprint";
  const Json o = ParseAnswer(what, line, Json::kObject);
  WorkerFootprint footprint;
  footprint.device = Member(o, "device", Json::kString, what, line).text;
  footprint.bytes = Integer(o, "bytes", what, line);
  footprint.method = Member(o, "method", Json::kString, what, line).text;
  if (footprint.bytes < 0) Malformed(what, line);
  return footprint;
}

}  // namespace slim
