#include "base/yaml.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/errors.h"

namespace slim {
namespace {

constexpr int kMaxDepth = 64;

// Keeps the position apart from the text so that ParseStructuredFile can say path:line:column.
class YamlError : public EngineError {
 public:
  YamlError(size_t line, size_t column, const std::string& detail)
      : EngineError(ErrorCode::kInvalidArgument, "line " + std::to_string(line) + ", column " + std::to_string(column) +
                           ": " + detail),
        line(line),
        column(column),
        detail(detail) {}
  size_t line, column;  // 1-based
  std::string detail;
};

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsFlowIndicator(char c) { return c == ',' || c == '[' || c == ']' || c == '{' || c == '}'; }

// True where a ':' at `i` separates a key from its value (YAML requires whitespace or the end;
// in flow context a flow indicator also ends the key).
bool IsColonSeparator(const std::string& l, size_t i, bool in_flow) {
  return l[i] == ':' &&
         (i + 1 == l.size() || IsBlank(l[i + 1]) || (in_flow && IsFlowIndicator(l[i + 1])));
}

// `#` starts a comment only at a line start or after whitespace ("a#b" is one scalar).
bool IsCommentStart(const std::string& l, size_t i) {
  return l[i] == '#' && (i == 0 || IsBlank(l[i - 1]));
}

int DigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return 99;
}

// The YAML 1.2 core schema's int and float forms. Validated by hand before strtod so that
// strtod's own extensions (hex floats, "infinity", leading spaces) never apply.
bool ResolveNumber(const std::string& s, double* out) {
  const bool sign = s[0] == '+' || s[0] == '-';
  const std::string body = s.substr(sign ? 1 : 0);
  if (body == ".inf" || body == ".Inf" || body == ".INF") {
    *out = (s[0] == '-' ? -1 : 1) * std::numeric_limits<double>::infinity();
    return true;
  }
  if (s == ".nan" || s == ".NaN" || s == ".NAN") {
    *out = std::numeric_limits<double>::quiet_NaN();
    return true;
  }
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o')) {
    const int base = s[1] == 'x' ? 16 : 8;
    double v = 0;
    for (size_t i = 2; i < s.size(); ++i) {
      const int d = DigitValue(s[i]);
      if (d >= base) return false;
      v = v * base + d;
    }
    *out = v;
    return true;
  }
  size_t i = sign ? 1 : 0, digits = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) ++digits;
  if (i < s.size() && s[i] == '.') {
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exponent_digits = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) ++exponent_digits;
    if (exponent_digits == 0) return false;
  }
  if (i != s.size()) return false;
  *out = std::strtod(s.c_str(), nullptr);
  return true;
}

Json Resolve(const std::string& s) {
  Json v;
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return v;
  if (s == "true" || s == "True" || s == "TRUE" || s == "false" || s == "False" || s == "FALSE") {
    v.kind = Json::kBool;
    v.boolean = s[0] == 't' || s[0] == 'T';
  } else if (ResolveNumber(s, &v.number)) {
    v.kind = Json::kNumber;
  } else {
    v.kind = Json::kString;
    v.text = s;
  }
  return v;
}

Json String(std::string text) {
  Json v;
  v.kind = Json::kString;
  v.text = std::move(text);
  return v;
}

// Recursive descent over lines. The cursor is (line_, col_); block constructs are delimited by
// indentation, so every block function starts at a node's first character and returns with
// line_ on the line after the node's last one.
class Parser {
 public:
  explicit Parser(const std::string& text) {
    // Line breaks are LF, CRLF or a lone CR (YAML 1.2 b-break), as JSON takes CR as whitespace.
    size_t start = text.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
    while (start < text.size()) {
      size_t end = text.find_first_of("\r\n", start);
      if (end == std::string::npos) end = text.size();
      lines_.push_back(text.substr(start, end - start));
      start = end + (text.compare(end, 2, "\r\n") == 0 ? 2 : 1);
    }
    final_newline_ = !text.empty() && (text.back() == '\n' || text.back() == '\r');
  }

  Json Document() {
    if (!NextContent()) return Json();
    const size_t root_indent = indent_;
    Json root = Node(-1, 0);
    if (NextContent()) {
      Fail(indent_ < root_indent ? "bad indentation: less indented than the document's first line"
                                 : "unexpected content after the top-level value (a plain "
                                   "scalar must fit on one line)");
    }
    return root;
  }

 private:
  [[noreturn]] void FailAt(size_t line, size_t col, const std::string& what) const {
    throw YamlError(line + 1, col + 1, what);
  }
  [[noreturn]] void Fail(const std::string& what) const { FailAt(line_, col_, what); }

  const std::string& Cur() const { return lines_[line_]; }
  char At(size_t col) const { return col < Cur().size() ? Cur()[col] : '\0'; }
  void SkipBlanks() {
    while (col_ < Cur().size() && IsBlank(Cur()[col_])) ++col_;
  }
  // After skipping blanks: nothing but an optional comment is left on the line.
  bool RestIsEmpty() {
    SkipBlanks();
    return col_ == Cur().size() || IsCommentStart(Cur(), col_);
  }
  bool IsSequenceEntry() const {
    return At(col_) == '-' && (At(col_ + 1) == '\0' || IsBlank(At(col_ + 1)));
  }
  static bool IsMarker(const std::string& l, const char* marker) {
    return l.compare(0, 3, marker) == 0 && (l.size() == 3 || IsBlank(l[3]));
  }

  // Moves line_ to the next line with content (not blank, not only a comment), setting indent_
  // and col_ to its indentation. False at the end of the input or at a `...` line. Idempotent
  // while line_ stays put, which lets every level ask "what comes next?".
  bool NextContent() {
    for (; line_ < lines_.size(); ++line_) {
      const std::string& l = Cur();
      const size_t first = l.find_first_not_of(" \t");
      if (first == std::string::npos || l[first] == '#') continue;
      if (IsMarker(l, "---")) {
        if (seen_start_ || seen_content_) FailAt(line_, 0, "multiple documents are not supported");
        col_ = 3;
        if (!RestIsEmpty()) Fail("content on the '---' line is not supported");
        seen_start_ = true;
        continue;
      }
      if (IsMarker(l, "...")) {
        for (size_t i = line_ + 1; i < lines_.size(); ++i) {
          const size_t f = lines_[i].find_first_not_of(" \t");
          if (f == std::string::npos || lines_[i][f] == '#' || IsMarker(lines_[i], "...")) continue;
          if (IsMarker(lines_[i], "---")) FailAt(i, 0, "multiple documents are not supported");
          FailAt(i, f, "content after the document end marker '...'");
        }
        return false;
      }
      if (l[0] == '%') FailAt(line_, 0, "directives ('%') are not supported");
      const size_t tab = l.find('\t');
      if (tab < first) FailAt(line_, tab, "tab character in indentation (indent with spaces)");
      seen_content_ = true;
      indent_ = col_ = first;
      return true;
    }
    return false;
  }

  // Characters that cannot start a node here, or features this reader rejects, each with its
  // own message.
  void CheckIndicator() const {
    const char c = At(col_), next = At(col_ + 1);
    if (c == '&') Fail("anchors ('&') are not supported");
    if (c == '*') Fail("aliases ('*') are not supported");
    if (c == '!') Fail("tags ('!') are not supported");
    if (c == '%') Fail("directives ('%') are not supported");
    if (c == '?' && (next == '\0' || IsBlank(next))) Fail("complex keys ('?') are not supported");
    if (c == '@' || c == '`') Fail(std::string("'") + c + "' cannot start a plain scalar");
    if (c == ']' || c == '}' || c == ',') Fail(std::string("unexpected '") + c + "'");
    if (c == '#') Fail("'#' starts a comment only after whitespace");
    if (c == '-' && (next == '\0' || IsBlank(next))) Fail("a sequence entry is not allowed here");
  }
  void CheckKey() const {
    CheckIndicator();
    const char c = At(col_);
    if (c == '[' || c == '{') Fail("flow collections as keys are not supported");
    if (c == '|' || c == '>') Fail("block scalars cannot be keys");
  }

  // A node in block context at (line_, col_), more indented than `parent`.
  Json Node(int parent, int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    if (IsSequenceEntry()) return Sequence(col_, false, depth);
    CheckIndicator();
    const char c = At(col_);
    if (c == '"' || c == '\'') {
      const size_t start = col_;
      Quoted();
      SkipBlanks();
      const bool is_key = At(col_) == ':';
      col_ = start;
      if (is_key) return Mapping(col_, depth);
    } else if (c != '[' && c != '{' && c != '|' && c != '>') {
      for (size_t i = col_; i < Cur().size() && !IsCommentStart(Cur(), i); ++i) {
        if (IsColonSeparator(Cur(), i, false)) return Mapping(col_, depth);
      }
    }
    return InlineValue(parent, depth);
  }

  // A block mapping whose keys sit at column `indent`; the first key is at (line_, col_), which
  // may be mid-line in a compact sequence item (`- key: v`).
  Json Mapping(size_t indent, int depth) {
    Json m;
    m.kind = Json::kObject;
    while (true) {
      if (IsSequenceEntry()) {
        Fail(
            "a sequence item where a mapping key was expected (a mapping and a sequence cannot "
            "be mixed at one level)");
      }
      CheckKey();
      const size_t key_line = line_, key_col = col_;
      std::string key;
      if (At(col_) == '"' || At(col_) == '\'') {
        key = Quoted();
        SkipBlanks();
        if (At(col_) != ':') Fail("expected ':' after a mapping key");
      } else {
        const std::string& l = Cur();
        size_t i = col_;
        while (i < l.size() && !IsCommentStart(l, i) && !IsColonSeparator(l, i, false)) ++i;
        if (i == l.size() || l[i] != ':') Fail("expected a mapping entry 'key: value'");
        size_t end = i;
        while (end > col_ && IsBlank(l[end - 1])) --end;
        if (end == col_) Fail("empty mapping key");
        key = l.substr(col_, end - col_);
        col_ = i;
      }
      if (m.members.count(key)) FailAt(key_line, key_col, "duplicate key '" + key + "'");
      ++col_;  // the ':'
      Json value;
      if (RestIsEmpty()) {
        ++line_;
        // The value is on the following lines: more indented, or a sequence at the key's
        // indentation; otherwise the value is empty (null).
        if (NextContent()) {
          if (indent_ > indent) {
            value = Node(static_cast<int>(indent), depth + 1);
          } else if (indent_ == indent && IsSequenceEntry()) {
            value = Sequence(indent, true, depth + 1);
          }
        }
      } else {
        if (IsSequenceEntry()) Fail("a block sequence cannot start on the line of its key");
        value = InlineValue(static_cast<int>(indent), depth + 1);
      }
      m.members[key] = std::move(value);
      if (!NextContent() || indent_ < indent) return m;
      if (indent_ > indent) Fail(BadIndentation(indent));
    }
  }

  // A block sequence whose dashes sit at column `indent`. `under_key`: it is the value of a key
  // at the same indentation, so a non-dash line there ends it rather than being an error.
  Json Sequence(size_t indent, bool under_key, int depth) {
    Json s;
    s.kind = Json::kArray;
    while (true) {
      ++col_;  // the '-'
      while (At(col_) == ' ') ++col_;
      if (At(col_) == '\t') Fail("tab character in indentation (indent with spaces)");
      if (RestIsEmpty()) {
        ++line_;
        s.items.push_back(
            NextContent() && indent_ > indent ? Node(static_cast<int>(indent), depth + 1) : Json());
      } else {
        s.items.push_back(Node(static_cast<int>(indent), depth + 1));
      }
      if (!NextContent() || indent_ < indent) return s;
      if (indent_ > indent) Fail(BadIndentation(indent));
      if (!IsSequenceEntry()) {
        if (under_key) return s;
        Fail(
            "expected a sequence item '- ' (a mapping and a sequence cannot be mixed at one "
            "level)");
      }
    }
  }

  static std::string BadIndentation(size_t indent) {
    return "bad indentation: expected column " + std::to_string(indent + 1) +
           " or less (multi-line plain scalars are not supported)";
  }

  // A scalar, block scalar or flow collection starting at (line_, col_); consumes the rest of
  // the line (and the block scalar's or flow collection's further lines).
  Json InlineValue(int parent, int depth) {
    CheckIndicator();
    const char c = At(col_);
    Json v;
    if (c == '|' || c == '>') return BlockScalar(parent);
    if (c == '[' || c == '{') {
      v = Flow(depth);
      if (!RestIsEmpty()) Fail("unexpected text after a flow collection");
    } else if (c == '"' || c == '\'') {
      v = String(Quoted());
      if (!RestIsEmpty()) Fail("unexpected text after a quoted string");
    } else {
      const std::string& l = Cur();
      size_t end = col_;
      while (end < l.size() && !IsCommentStart(l, end)) {
        if (IsColonSeparator(l, end, false)) {
          col_ = end;
          Fail(
              "unexpected ': ' in a plain value (quote the value, or start a nested mapping on "
              "its own line)");
        }
        ++end;
      }
      while (end > col_ && IsBlank(l[end - 1])) --end;
      v = Resolve(l.substr(col_, end - col_));
    }
    ++line_;
    return v;
  }

  // `|` or `>` at (line_, col_). The content is every following line indented more than
  // `parent` (at the first content line's indentation) and blank lines among them; comment-like
  // lines are content. Folding and chomping follow YAML 1.2 (8.1.1.2, 8.1.3).
  Json BlockScalar(int parent) {
    const bool folded = At(col_) == '>';
    char chomp = ' ';
    ++col_;
    if (At(col_) == '-' || At(col_) == '+') chomp = At(col_++);
    if (At(col_) >= '0' && At(col_) <= '9') {
      Fail("explicit indentation indicators on block scalars are not supported");
    }
    if (!RestIsEmpty()) Fail("unexpected text after a block scalar indicator");
    std::vector<std::string> body;
    size_t indent = 0;
    bool have_indent = false;
    for (++line_; line_ < lines_.size(); ++line_) {
      const std::string& l = Cur();
      const size_t first = l.find_first_not_of(' ');
      if (l.find_first_not_of(" \t") == std::string::npos) {
        body.push_back(have_indent && l.size() > indent ? l.substr(indent) : "");
        continue;
      }
      if (!have_indent) {
        if (static_cast<int>(first) <= parent) break;
        indent = first;
        have_indent = true;
      }
      if (first < indent || IsMarker(l, "---") || IsMarker(l, "...")) break;
      body.push_back(l.substr(indent));
    }
    const bool ends_file = line_ == lines_.size() && !final_newline_;
    size_t n = body.size();
    while (n > 0 && body[n - 1].empty()) --n;
    const size_t trailing = body.size() - n;
    std::string text;
    bool more_indented = false;  // folding keeps line breaks around more-indented lines
    size_t breaks = 0;
    for (size_t i = 0; i < n; ++i) {
      const std::string& l = body[i];
      if (l.empty()) {
        ++breaks;
        continue;
      }
      const bool more = IsBlank(l[0]);
      if (i == 0 || i == breaks) {
        text.append(breaks, '\n');  // leading empty lines
      } else if (!folded || more || more_indented) {
        text.append(breaks + 1, '\n');
      } else {
        text.append(breaks == 0 ? std::string(" ") : std::string(breaks, '\n'));
      }
      text += l;
      more_indented = more;
      breaks = 0;
    }
    if (chomp == '+') {
      if (n > 0 && !(ends_file && trailing == 0)) text += '\n';
      text.append(trailing, '\n');
    } else if (chomp == ' ' && n > 0 && !(ends_file && trailing == 0)) {
      text += '\n';
    }
    return String(std::move(text));
  }

  // A single-line quoted scalar at (line_, col_); leaves col_ after the closing quote.
  std::string Quoted() {
    const std::string& l = Cur();
    const char quote = l[col_];
    const size_t open = col_++;
    std::string out;
    while (true) {
      if (col_ >= l.size()) {
        FailAt(line_, open,
               std::string("unterminated ") + (quote == '"' ? "double" : "single") +
                   "-quoted string (quoted strings must end on their line)");
      }
      const char c = l[col_++];
      if (c == quote) {
        if (quote == '\'' && At(col_) == '\'') {
          out += '\'';
          ++col_;
          continue;
        }
        return out;
      }
      if (quote == '\'' || c != '\\') {
        out += c;
        continue;
      }
      const char e = At(col_++);
      if (e == 'u') {
        unsigned cp = Hex4();
        if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate: its low half must follow
          if (At(col_) != '\\' || At(col_ + 1) != 'u') Fail("unpaired surrogate in \\u escape");
          col_ += 2;
          const unsigned low = Hex4();
          if (low < 0xDC00 || low > 0xDFFF) Fail("unpaired surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          Fail("unpaired surrogate in \\u escape");
        }
        AppendUtf8(cp, &out);
        continue;
      }
      const char* from = "\"\\/bfnrt0";
      const char* to = "\"\\/\b\f\n\r\t\0";
      const char* k = e == '\0' ? nullptr : std::strchr(from, e);
      if (k == nullptr) {
        col_ -= 2;
        Fail(e == '\0' ? std::string("unterminated double-quoted string")
                       : std::string("unknown escape '\\") + e + "' in a double-quoted string");
      }
      out += to[k - from];
    }
  }
  unsigned Hex4() {
    unsigned v = 0;
    for (int k = 0; k < 4; ++k, ++col_) {
      const int d = DigitValue(At(col_));
      if (d >= 16) Fail("bad \\u escape (expected 4 hex digits)");
      v = (v << 4) | static_cast<unsigned>(d);
    }
    return v;
  }

  // Skips whitespace, comments and line breaks inside a flow collection opened at
  // (open_line, open_col).
  void FlowSpace(size_t open_line, size_t open_col, const char* what) {
    while (true) {
      if (line_ >= lines_.size()) FailAt(open_line, open_col, std::string("unterminated ") + what);
      if (!RestIsEmpty()) return;
      ++line_;
      col_ = 0;
    }
  }

  // A flow node at (line_, col_): a collection (which may span lines), a quoted or a plain
  // scalar. Plain scalars end at a flow indicator, `: `, ` #` or the line's end.
  Json Flow(int depth) {
    if (depth > kMaxDepth) Fail("nesting too deep");
    CheckIndicator();
    const char c = At(col_);
    if (c == '"' || c == '\'') return String(Quoted());
    if (c == '|' || c == '>') Fail("block scalars are not allowed inside flow collections");
    if (c != '[' && c != '{') return Resolve(FlowPlain("expected a value"));
    const bool is_map = c == '{';
    const char close = is_map ? '}' : ']';
    const char* what = is_map ? "flow mapping '{'" : "flow sequence '['";
    const size_t open_line = line_, open_col = col_++;
    Json v;
    v.kind = is_map ? Json::kObject : Json::kArray;
    FlowSpace(open_line, open_col, what);
    while (At(col_) != close) {
      if (is_map) {
        const size_t key_line = line_, key_col = col_;
        CheckKey();
        const std::string key =
            At(col_) == '"' || At(col_) == '\'' ? Quoted() : FlowPlain("expected a key");
        FlowSpace(open_line, open_col, what);
        if (At(col_) != ':') Fail("expected ':' after a key in a flow mapping");
        ++col_;
        FlowSpace(open_line, open_col, what);
        if (v.members.count(key)) FailAt(key_line, key_col, "duplicate key '" + key + "'");
        v.members[key] = At(col_) == ',' || At(col_) == '}' ? Json() : Flow(depth + 1);
      } else {
        v.items.push_back(Flow(depth + 1));
      }
      FlowSpace(open_line, open_col, what);
      if (At(col_) == ',') {
        ++col_;
        FlowSpace(open_line, open_col, what);
      } else if (At(col_) != close) {
        Fail(std::string("expected ',' or '") + close + "' in a " +
             (is_map ? "flow mapping" : "flow sequence"));
      }
    }
    ++col_;
    return v;
  }
  std::string FlowPlain(const char* if_empty) {
    const std::string& l = Cur();
    size_t end = col_;
    while (end < l.size() && !IsFlowIndicator(l[end]) && !IsColonSeparator(l, end, true) &&
           !IsCommentStart(l, end)) {
      ++end;
    }
    while (end > col_ && IsBlank(l[end - 1])) --end;
    if (end == col_) Fail(if_empty);
    std::string text = l.substr(col_, end - col_);
    col_ = end;
    return text;
  }

  std::vector<std::string> lines_;  // without line breaks
  bool final_newline_ = false;
  size_t line_ = 0, col_ = 0, indent_ = 0;
  bool seen_start_ = false, seen_content_ = false;
};

// ParseJson reports "... at byte N"; turn that into line:column like the YAML errors.
std::string JsonErrorWithPath(const std::string& path, const std::string& text,
                              const std::string& what) {
  const size_t at = what.rfind(" at byte ");
  if (at == std::string::npos) return path + ": " + what;
  const size_t byte =
      std::min<size_t>(std::strtoull(what.c_str() + at + 9, nullptr, 10), text.size());
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < byte; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return path + ":" + std::to_string(line) + ":" + std::to_string(byte - line_start + 1) + ": " +
         what.substr(0, at);
}

}  // namespace

Json ParseYaml(const std::string& text) { return Parser(text).Document(); }

Json ParseStructuredFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot read file");
  std::string text;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  const bool failed = std::ferror(f) != 0;  // e.g. a directory
  std::fclose(f);
  if (failed) throw EngineError(ErrorCode::kInvalidArgument, path + ": cannot read file");
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw EngineError(ErrorCode::kInvalidArgument, path + ": empty file");
  }
  const size_t dot = path.find_last_of('.');
  const size_t slash = path.find_last_of('/');
  std::string ext = dot == std::string::npos || (slash != std::string::npos && dot < slash)
                        ? ""
                        : path.substr(dot + 1);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == "json") {
    try {
      return ParseJson(text);
    } catch (const EngineError& e) {
      throw EngineError(ErrorCode::kInvalidArgument, JsonErrorWithPath(path, text, e.what()));
    }
  }
  try {
    return ParseYaml(text);
  } catch (const YamlError& e) {
    throw EngineError(ErrorCode::kInvalidArgument, path + ":" + std::to_string(e.line) + ":" + std::to_string(e.column) +
                             ": " + e.detail);
  }
}

}  // namespace slim
