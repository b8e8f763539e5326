// A reader for the YAML subset that slim's job spec files use (`slim-train run --spec job.yaml`),
// producing the same `Json` tree as ParseJson. Plain C++17; no LibTorch, no yaml-cpp.
//
// Supported (one document holding one node):
//   - Block mappings `key: value`, nested by indentation with spaces. Keys are plain or quoted
//     scalars on one line, taken as text as is (`1: x` has the key "1"); a duplicate key is an
//     error.
//   - Block sequences `- item`, including compact items (`- key: v` whose further keys align
//     with `key`; `- - x`), and a sequence at the same indentation as its parent key
//     (`items:\n- a\n- b`).
//   - Flow sequences `[a, 1, "x"]` and flow mappings `{a: 1, b: [2]}`: nested, a trailing comma
//     allowed, may span lines, so a JSON document parses as ParseJson would. In a flow mapping
//     every key needs a `:` (`{a: 1}`; after a quoted key `{"a":1}` also works).
//   - Plain scalars (one line; a comment ` #` ends them), 'single-quoted' (`''` is a quote) and
//     "double-quoted" strings (one line; escapes \" \\ \/ \b \f \n \r \t \0 and \uXXXX with
//     surrogate pairs, decoded to UTF-8).
//   - Block scalars: literal `|` and folded `>`, with clip (default), strip `-` or keep `+`
//     chomping; their indentation is that of the first non-empty line.
//   - Comments (`#` at a line start or after whitespace, not inside quotes), blank lines, LF,
//     CRLF or lone CR line ends, a UTF-8 BOM, an optional leading `---` line and an optional
//     trailing `...` line.
//   Plain scalars resolve as in the YAML 1.2 core schema: `null`, `Null`, `NULL`, `~` and an empty
//   value are kNull; true/True/TRUE/false/False/FALSE are kBool; decimal integers, 0x/0o
//   integers, floats (`1e-4`, `.5`, `-3.0`, `1.`), `.inf`/`-.inf`/`.nan` (and their `.Inf`,
//   `.INF`, `.NaN`, `.NAN` spellings) are kNumber; anything else (`yes`, `1_000`, `nan`) is
//   kString. Quoted scalars are always kString. A document with no node is kNull.
//
// Deliberately unsupported, reported as "... not supported": anchors `&`, aliases `*`, tags `!`,
// directives `%`, complex keys `?`, multiple documents, content on the `---` line, explicit
// block-scalar indentation indicators (`|2`), flow collections as keys. Unsupported and reported
// as a syntax error: multi-line plain or quoted scalars, single-pair mappings inside flow
// sequences (`[a: 1]`). Also errors: tabs in indentation, a mapping and a sequence mixed at one
// level, bad indentation, unterminated quotes or flow collections, nesting deeper than 64.
//
// Errors throw EngineError(kInvalidArgument, "line L, column C: <what is wrong>") (base/errors.h;
// a std::runtime_error) with 1-based positions.
#pragma once

#include <string>

#include "base/json.h"

namespace slim {

Json ParseYaml(const std::string& text);

// Reads and parses a file: `.json` with ParseJson, `.yaml`/`.yml` (any case) with ParseYaml, any
// other extension with ParseYaml (which also accepts JSON). Every error names the path:
// "<path>: cannot read file", "<path>: empty file" (nothing but whitespace), and for a syntax
// error "<path>:<line>:<column>: <what is wrong>" (JSON errors too, their byte offset converted).
Json ParseStructuredFile(const std::string& path);

}  // namespace slim
