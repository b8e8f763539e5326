// Fuzz target: worker event lines as slimd reads them from a worker's pipe (EventFromJson).
// Expected failures are EngineError; anything else is a finding. Invariant: an accepted event,
// written by EventToJson and read again, is written the same way.
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/errors.h"
#include "base/worker_events.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace slim;
  TrainingEvent event;
  try {
    event = EventFromJson(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const EngineError&) {
    return 0;
  }
  fuzz::MarkAccepted();
  const std::string line = EventToJson(event);
  fuzz::Check(line.find('\n') == std::string::npos, "an event line holds a newline");
  fuzz::Check(EventToJson(EventFromJson(line)) == line, "EventToJson does not read back the same");
  return 0;
}
