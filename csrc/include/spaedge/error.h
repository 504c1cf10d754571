// spaedge::Error: the one exception type the runtime throws.
//
// Every message names the file (as the caller spelled its path) and the field
// or tensor at fault, e.g.
//   "digits.safetensors: tensor 'layer1.0.conv1.out_index': index 70 out of
//    range for 64 output channels".
// Messages quote names and text taken from files and paths; so that a message
// is always one printable line of valid UTF-8, control characters (C0, DEL,
// C1) and bytes that are not UTF-8 are written as \xNN (error_text).
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

namespace spaedge {

// `s` with control characters and invalid UTF-8 bytes escaped as \xNN (C1
// controls, U+0080..U+009F, as \u0080..\u009f); everything else unchanged.
inline std::string error_text(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  char buf[8];
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
      ++i;
      continue;
    }
    // Length of a well-formed UTF-8 sequence at i (no overlongs or surrogates), else 0.
    size_t len = 0;
    unsigned cp = 0;
    if (c >= 0xc2 && c <= 0xdf)
      len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
      len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
      len = 4, cp = c & 0x07;
    if (len && i + len <= n) {
      for (size_t k = 1; k < len; ++k) {
        if ((p[i + k] & 0xc0) != 0x80) {
          len = 0;
          break;
        }
        cp = (cp << 6) | (p[i + k] & 0x3f);
      }
      if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) len = 0;
      if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) len = 0;
    } else {
      len = 0;
    }
    if (len == 2 && cp >= 0x80 && cp <= 0x9f) {
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      out += buf;
    } else if (len) {
      out.append(s, i, len);
      i += len;
      continue;
    } else {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      len = 1;
    }
    i += len;
  }
  return out;
}

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(error_text(what)) {}
};

}  // namespace spaedge
