// Assembling a byte stream (a byte-vocabulary model's tokens, drawn one at a time) into valid
// UTF-8 text: protobuf `string` fields must hold valid UTF-8 (a message with a lone 0xE2 cannot
// be serialized, and a gRPC stream writing one never completes). Plain C++.
#pragma once

#include <cstdint>
#include <string>

namespace slim {

// Feeds bytes in order; each call returns the text now complete. A byte sequence that cannot be
// UTF-8 (a stray continuation byte, an overlong or surrogate encoding, a sequence cut short)
// becomes U+FFFD, one per maximal invalid subpart, as the Unicode standard recommends and
// browsers do; everything else passes through unchanged.
class Utf8Assembler {
 public:
  std::string Push(uint8_t byte);
  // The incomplete sequence still held, as U+FFFD ("" when none): call at the end of the stream.
  std::string Finish();

 private:
  std::string pending_;  // a lead byte and the continuation bytes seen so far
  int needed_ = 0;       // the whole sequence's length, once a lead byte is held
};

}  // namespace slim
