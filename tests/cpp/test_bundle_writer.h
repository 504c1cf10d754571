// Test helpers: write safetensors bundle bytes by hand (no Python), and
// temporary directories. Shared by test_bundle.cpp and test_runtime.cpp; the
// checks are check.h's.
#pragma once

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
        std::string t = (std::filesystem::is_directory(base) ? base : std::string("/tmp")) + "/spaedge_cpp_test_XXXXXX";
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
    std::string dtype;  // "F32", "I32", or anything (to test refusal)
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
};

inline Tensor f32(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& v) {
    Tensor t{name, "F32", std::move(shape), std::vector<uint8_t>(v.size() * 4)};
    if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
    return t;
}

inline Tensor i32(const std::string& name, const std::vector<int32_t>& v) {
    Tensor t{name, "I32", {int64_t(v.size())}, std::vector<uint8_t>(v.size() * 4)};
    if (!v.empty()) std::memcpy(t.bytes.data(), v.data(), v.size() * 4);
    return t;
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

// A complete bundle: adds version "1" (unless meta has one) and the content hash.
inline std::vector<uint8_t> bundle(const std::vector<Tensor>& tensors, Meta meta) {
    bool has_version = false;
    for (const auto& kv : meta)
        if (kv.first == "version") has_version = true;
    if (!has_version) meta.emplace_back("version", "1");
    Layout l0 = layout(tensors, meta);
    meta.emplace_back("content_hash", sha_hex(l0.data));
    Layout l = layout(tensors, meta);
    return assemble(l.header, l.data);
}

}  // namespace tb
