// Fuzz target: job specs as slimd and slim-train read them. The input is a document, read as
// YAML (ParseYaml) and as JSON (ParseJson), then as a job spec (JobSpecFromJson).
// Expected failures are EngineError; anything else (another exception, a crash, a sanitizer
// report, a broken invariant below) is a finding. Invariants:
//   - JSON written by SerializeJson reads back to the same document;
//   - a document that both readers accept is the same tree for both (yaml.h: JSON is YAML);
//   - an accepted spec's JobSpecToJson form reads back to a spec with the same JSON form and
//     the same training fingerprint.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "base/errors.h"
#include "base/job_spec.h"
#include "base/json.h"
#include "base/yaml.h"
#include "tests/fuzz/fuzz_support.h"

namespace slim::fuzz {
namespace {

// SerializeJson of `doc`, or nothing when it holds a non-finite number (YAML's .inf / .nan),
// which JSON cannot represent.
std::optional<std::string> Serialized(const Json& doc) {
  try {
    return SerializeJson(doc);
  } catch (const EngineError&) {
    return std::nullopt;
  }
}

void CheckJsonRoundTrip(const Json& doc) {
  const std::optional<std::string> text = Serialized(doc);
  if (!text) return;
  Check(SerializeJson(ParseJson(*text)) == *text, "SerializeJson output does not read back the same");
}

void CheckSpec(const Json& doc) {
  JobSpec spec;
  try {
    spec = JobSpecFromJson(doc, "/specs");
  } catch (const EngineError&) {
    return;
  }
  MarkAccepted();
  const Json written = JobSpecToJson(spec);
  const std::string text = SerializeJson(written);
  // The written form must be a valid spec by itself (absolute paths: no base_dir needed).
  const JobSpec again = JobSpecFromJson(ParseJson(text));
  Check(SerializeJson(JobSpecToJson(again)) == text, "JobSpecToJson does not read back to the same spec");
  Check(TrainingFingerprint(again) == TrainingFingerprint(spec), "training fingerprint changed on a round trip");
}

}  // namespace
}  // namespace slim::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace slim;
  const std::string text(reinterpret_cast<const char*>(data), size);
  std::optional<Json> yaml, json;
  try {
    yaml = ParseYaml(text);
  } catch (const EngineError&) {
  }
  try {
    json = ParseJson(text);
  } catch (const EngineError&) {
  }
  if (yaml) fuzz::CheckJsonRoundTrip(*yaml);
  if (json) fuzz::CheckJsonRoundTrip(*json);
  if (yaml && json) {
    fuzz::Check(fuzz::Serialized(*yaml) == fuzz::Serialized(*json), "YAML and JSON readers disagree on a document");
  }
  if (yaml) fuzz::CheckSpec(*yaml);
  if (json && !yaml) fuzz::CheckSpec(*json);
  return 0;
}
