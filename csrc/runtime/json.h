// A small strict JSON parser (RFC 8259), written for spaedge. Internal header.
//
// Strict: one value, optional surrounding whitespace, no comments, no trailing
// commas, no duplicate object keys, strings must be valid UTF-8 with no raw
// control characters, nesting depth limited. Object members keep file order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace spaedge::json {

enum class Type { Null, Bool, Number, String, Array, Object };

const char* type_name(Type t);

struct Value {
  Type type = Type::Null;
  bool boolean = false;
  double number = 0.0;
  bool is_integer = false;  // number token had no fraction/exponent and fits int64
  int64_t integer = 0;      // valid when is_integer
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  bool is(Type t) const { return type == t; }
  // Member lookup (objects only); null when absent.
  const Value* find(const std::string& key) const;
};

// Parses `text`; on failure throws spaedge::Error("<context>: invalid JSON at
// byte N: <reason>").
Value parse(const char* text, size_t len, const std::string& context, int max_depth = 64);
inline Value parse(const std::string& text, const std::string& context) {
  return parse(text.data(), text.size(), context);
}

// True when [p, p+len) is well-formed UTF-8 (no overlongs, no surrogates).
bool valid_utf8(const char* p, size_t len);

}  // namespace spaedge::json
