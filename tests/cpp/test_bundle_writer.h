// Test helpers: write safetensors bundle bytes by hand (no Python), and
// temporary directories. Shared by test_bundle.cpp and test_runtime.cpp; the
// checks are check.h's.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "runtime/sha256.h"

namespace tb {

// ---- temp dir ------------------------------------------------------------------------
struct TempDir {
  std::filesystem::path path;
  // base: parent directory (e.g. "/dev/shm" for many small rewrites: much faster there).
  explicit TempDir(const std::string& base = "/tmp") {
    std::string t = (std::filesystem::is_directory(base) ? base : std::string("/tmp")) +
                    "/spaedge_cpp_test_XXXXXX";
    std::vector<char> tmpl(t.begin(), t.end());
    tmpl.push_back('\0');
    char* p = mkdtemp(tmpl.data());
    if (!p) {
      std::perror("mkdtemp");
      std::exit(2);
    }
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// ---- bundle bytes ----------------------------------------------------------------------
struct Tensor {
  std::string name;
  std::string dtype;  // "F32", "I32", "U8", "I8", or anything (to test refusal)
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

inline Tensor f32(const std::string& name, std::vector<int64_t> shape,
                  const std::vector<float>& v) {
  Tensor t{name, "F32", std::move(shape), std::vector<uint8_t>(v.size() * 4)};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
  return t;
}

inline Tensor i32(const std::string& name, const std::vector<int32_t>& v) {
  Tensor t{name, "I32", {int64_t(v.size())}, std::vector<uint8_t>(v.size() * 4)};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
  return t;
}

inline Tensor i8(const std::string& name, std::vector<int64_t> shape,
                 const std::vector<int8_t>& v) {
  Tensor t{name, "I8", std::move(shape), std::vector<uint8_t>(v.size())};
  if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size());
  return t;
}

inline Tensor u8(const std::string& name, const std::vector<uint8_t>& v) {
  return Tensor{name, "U8", {int64_t(v.size())}, v};
}

inline std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

using Meta = std::vector<std::pair<std::string, std::string>>;

struct Layout {
  std::string header;         // JSON text (unpadded)
  std::vector<uint8_t> data;  // data section
};

// Header JSON + data section; tensors laid out back to back in the given order.
inline Layout layout(const std::vector<Tensor>& tensors, const Meta& meta) {
  Layout l;
  std::string h = "{\"__metadata__\":{";
  for (size_t i = 0; i < meta.size(); ++i)
    h += (i ? "," : "") + json_str(meta[i].first) + ":" + json_str(meta[i].second);
  h += "}";
  for (const auto& t : tensors) {
    size_t b = l.data.size();
    l.data.insert(l.data.end(), t.bytes.begin(), t.bytes.end());
    h += "," + json_str(t.name) + ":{\"dtype\":" + json_str(t.dtype) + ",\"shape\":[";
    for (size_t k = 0; k < t.shape.size(); ++k) h += (k ? "," : "") + std::to_string(t.shape[k]);
    h += "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(l.data.size()) + "]}";
  }
  l.header = h + "}";
  return l;
}

// 8-byte length + header padded with spaces to 8-byte alignment + data.
inline std::vector<uint8_t> assemble(std::string header, const std::vector<uint8_t>& data) {
  while (header.size() % 8) header += ' ';
  std::vector<uint8_t> out(8 + header.size() + data.size());
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = uint8_t(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

inline std::string sha_hex(const std::vector<uint8_t>& data) {
  return spaedge::Sha256::hex(data.data(), data.size());
}

// The canonical content hash of format version 4, written from docs/format.md
// independently of the runtime's (runtime/content_hash.h): u64 little-endian
// counts and lengths; metadata but content_hash by key bytes; the tensor table
// (name, dtype, shape, data_offsets) by name bytes; then the data section.
inline std::string content_hash(const std::vector<Tensor>& tensors, const Meta& meta,
                                const std::vector<uint8_t>& data) {
  spaedge::Sha256 h;
  auto u64 = [&](uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i) b[i] = uint8_t(v >> (8 * i));
    h.update(b, 8);
  };
  auto str = [&](const std::string& x) {
    u64(x.size());
    h.update(x.data(), x.size());
  };
  std::vector<std::pair<std::string, std::string>> m;
  for (const auto& kv : meta)
    if (kv.first != "content_hash") m.push_back(kv);
  std::sort(m.begin(), m.end(), [](const auto& a, const auto& b) {
    return std::lexicographical_compare(a.first.begin(), a.first.end(), b.first.begin(),
                                        b.first.end(),
                                        [](char x, char y) { return uint8_t(x) < uint8_t(y); });
  });
  u64(m.size());
  for (const auto& kv : m) {
    str(kv.first);
    str(kv.second);
  }
  // Offsets as layout() assigns them: back to back in the given order.
  std::vector<std::pair<const Tensor*, std::pair<uint64_t, uint64_t>>> t;
  uint64_t at = 0;
  for (const auto& x : tensors) {
    t.push_back({&x, {at, at + x.bytes.size()}});
    at += x.bytes.size();
  }
  std::sort(t.begin(), t.end(), [](const auto& a, const auto& b) {
    const std::string &x = a.first->name, &y = b.first->name;
    return std::lexicographical_compare(x.begin(), x.end(), y.begin(), y.end(),
                                        [](char p, char q) { return uint8_t(p) < uint8_t(q); });
  });
  u64(t.size());
  for (const auto& e : t) {
    str(e.first->name);
    str(e.first->dtype);
    u64(e.first->shape.size());
    for (int64_t d : e.first->shape) u64(uint64_t(d));
    u64(e.second.first);
    u64(e.second.second);
  }
  h.update(data.data(), data.size());
  uint8_t d[32];
  h.finish(d);
  return spaedge::to_hex(d, 32);
}

// A complete bundle: adds version "4" (unless meta has one) and the content hash.
inline std::vector<uint8_t> bundle(const std::vector<Tensor>& tensors, Meta meta) {
  bool has_version = false;
  for (const auto& kv : meta)
    if (kv.first == "version") has_version = true;
  if (!has_version) meta.emplace_back("version", "4");
  Layout l0 = layout(tensors, meta);
  meta.emplace_back("content_hash", content_hash(tensors, meta, l0.data));
  Layout l = layout(tensors, meta);
  return assemble(l.header, l.data);
}

}  // namespace tb
