#include "runtime/json.h"

#include <charconv>
#include <cmath>
#include <system_error>

#include "spaedge/error.h"

namespace spaedge::json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null:
      return "null";
    case Type::Bool:
      return "boolean";
    case Type::Number:
      return "number";
    case Type::String:
      return "string";
    case Type::Array:
      return "array";
    case Type::Object:
      return "object";
  }
  return "?";
}

const Value* Value::find(const std::string& key) const {
  if (type != Type::Object) return nullptr;
  for (const auto& kv : object)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

// Length of the UTF-8 sequence at p (1..4), or 0 if malformed.
size_t utf8_seq(const unsigned char* p, size_t avail) {
  unsigned c = p[0];
  if (c < 0x80) return 1;
  size_t n;
  unsigned cp;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (avail < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18));
    s += char(0x80 | ((cp >> 12) & 0x3F));
    s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
}

class Parser {
 public:
  Parser(const char* p, size_t n, const std::string& ctx, int max_depth)
      : p_(p), n_(n), ctx_(ctx), max_depth_(max_depth) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (i_ != n_) fail("unexpected data after the JSON value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(ctx_ + ": invalid JSON at byte " + std::to_string(i_) + ": " + why);
  }
  void skip_ws() {
    while (i_ < n_ && (p_[i_] == ' ' || p_[i_] == '\t' || p_[i_] == '\n' || p_[i_] == '\r')) ++i_;
  }
  bool eat(char c) {
    if (i_ < n_ && p_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect_literal(const char* lit) {
    for (const char* q = lit; *q; ++q) {
      if (i_ >= n_ || p_[i_] != *q) fail(std::string("expected '") + lit + "'");
      ++i_;
    }
  }

  Value parse_value(int depth) {
    if (depth > max_depth_) fail("nesting deeper than " + std::to_string(max_depth_));
    if (i_ >= n_) fail("unexpected end of input, expected a value");
    Value v;
    char c = p_[i_];
    switch (c) {
      case '{':
        parse_object(v, depth);
        break;
      case '[':
        parse_array(v, depth);
        break;
      case '"':
        v.type = Type::String;
        v.string = parse_string();
        break;
      case 't':
        expect_literal("true");
        v.type = Type::Bool;
        v.boolean = true;
        break;
      case 'f':
        expect_literal("false");
        v.type = Type::Bool;
        break;
      case 'n':
        expect_literal("null");
        break;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) {
          parse_number(v);
        } else {
          fail(std::string("unexpected character ") + describe(c));
        }
    }
    return v;
  }

  static std::string describe(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) return std::string("'") + c + "'";
    char buf[8];
    static const char hexd[] = "0123456789abcdef";
    buf[0] = '0';
    buf[1] = 'x';
    buf[2] = hexd[u >> 4];
    buf[3] = hexd[u & 15];
    buf[4] = 0;
    return buf;
  }

  void parse_object(Value& v, int depth) {
    v.type = Type::Object;
    ++i_;  // '{'
    skip_ws();
    if (eat('}')) return;
    for (;;) {
      skip_ws();
      if (i_ >= n_ || p_[i_] != '"') fail("expected a string key in object");
      size_t key_pos = i_;
      std::string key = parse_string();
      for (const auto& kv : v.object) {
        if (kv.first == key) {
          i_ = key_pos;
          fail("duplicate key \"" + key + "\"");
        }
      }
      skip_ws();
      if (!eat(':')) fail("expected ':' after object key");
      skip_ws();
      Value member = parse_value(depth + 1);
      v.object.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (eat(',')) continue;
      if (eat('}')) return;
      fail("expected ',' or '}' in object");
    }
  }

  void parse_array(Value& v, int depth) {
    v.type = Type::Array;
    ++i_;  // '['
    skip_ws();
    if (eat(']')) return;
    for (;;) {
      skip_ws();
      v.array.push_back(parse_value(depth + 1));
      skip_ws();
      if (eat(',')) continue;
      if (eat(']')) return;
      fail("expected ',' or ']' in array");
    }
  }

  unsigned hex4() {
    if (n_ - i_ < 4) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int k = 0; k < 4; ++k) {
      char c = p_[i_++];
      cp <<= 4;
      if (c >= '0' && c <= '9')
        cp |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f')
        cp |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        cp |= unsigned(c - 'A' + 10);
      else
        fail("bad hex digit in \\u escape");
    }
    return cp;
  }

  std::string parse_string() {
    ++i_;  // opening quote
    std::string s;
    for (;;) {
      if (i_ >= n_) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(p_[i_]);
      if (c == '"') {
        ++i_;
        return s;
      }
      if (c < 0x20) fail("raw control character in string");
      if (c == '\\') {
        ++i_;
        if (i_ >= n_) fail("unterminated escape");
        char e = p_[i_++];
        switch (e) {
          case '"':
            s += '"';
            break;
          case '\\':
            s += '\\';
            break;
          case '/':
            s += '/';
            break;
          case 'b':
            s += '\b';
            break;
          case 'f':
            s += '\f';
            break;
          case 'n':
            s += '\n';
            break;
          case 'r':
            s += '\r';
            break;
          case 't':
            s += '\t';
            break;
          case 'u': {
            unsigned cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (n_ - i_ < 2 || p_[i_] != '\\' || p_[i_ + 1] != 'u')
                fail("high surrogate not followed by a low surrogate");
              i_ += 2;
              unsigned lo = hex4();
              if (lo < 0xDC00 || lo > 0xDFFF)
                fail("high surrogate not followed by a low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            append_utf8(s, cp);
            break;
          }
          default:
            --i_;
            fail(std::string("unknown escape \\") + describe(e));
        }
        continue;
      }
      size_t len = utf8_seq(reinterpret_cast<const unsigned char*>(p_ + i_), n_ - i_);
      if (len == 0) fail("invalid UTF-8 in string");
      s.append(p_ + i_, len);
      i_ += len;
    }
  }

  static bool digit(char c) { return c >= '0' && c <= '9'; }

  void parse_number(Value& v) {
    size_t start = i_;
    bool integral = true;
    eat('-');
    if (i_ >= n_) fail("truncated number");
    if (p_[i_] == '0') {
      ++i_;
      if (i_ < n_ && digit(p_[i_])) fail("leading zero in number");
    } else if (digit(p_[i_])) {
      while (i_ < n_ && digit(p_[i_])) ++i_;
    } else {
      fail("expected digits in number");
    }
    if (i_ < n_ && p_[i_] == '.') {
      integral = false;
      ++i_;
      if (i_ >= n_ || !digit(p_[i_])) fail("expected digits after decimal point");
      while (i_ < n_ && digit(p_[i_])) ++i_;
    }
    if (i_ < n_ && (p_[i_] == 'e' || p_[i_] == 'E')) {
      integral = false;
      ++i_;
      if (i_ < n_ && (p_[i_] == '+' || p_[i_] == '-')) ++i_;
      if (i_ >= n_ || !digit(p_[i_])) fail("expected digits in exponent");
      while (i_ < n_ && digit(p_[i_])) ++i_;
    }
    v.type = Type::Number;
    const char* b = p_ + start;
    const char* e = p_ + i_;
    if (integral) {
      int64_t x = 0;
      auto r = std::from_chars(b, e, x);
      if (r.ec == std::errc() && r.ptr == e) {
        v.is_integer = true;
        v.integer = x;
        v.number = double(x);
        return;
      }
    }
    double d = 0;
    auto r = std::from_chars(b, e, d, std::chars_format::general);
    if (r.ec == std::errc::result_out_of_range) {
      // Underflow to zero is harmless; overflow is not a usable number.
      size_t save = i_;
      i_ = start;
      bool tiny = false;
      for (const char* q = b; q < e; ++q)
        if (*q == '-' && q > b) tiny = true;  // negative exponent
      if (!tiny) fail("number out of range");
      i_ = save;
      d = 0.0;
    } else if (r.ec != std::errc() || r.ptr != e) {
      i_ = start;
      fail("malformed number");
    }
    if (!std::isfinite(d)) {
      i_ = start;
      fail("number out of range");
    }
    v.number = d;
  }

  const char* p_;
  size_t n_;
  size_t i_ = 0;
  const std::string& ctx_;
  int max_depth_;
};

}  // namespace

bool valid_utf8(const char* p, size_t len) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  size_t i = 0;
  while (i < len) {
    size_t n = utf8_seq(u + i, len - i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

Value parse(const char* text, size_t len, const std::string& context, int max_depth) {
  Parser p(text, len, context, max_depth);
  return p.parse_document();
}

}  // namespace spaedge::json
