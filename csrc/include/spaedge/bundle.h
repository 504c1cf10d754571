// spaedge bundle reader: a memory-mapped, fully validated safetensors file.
//
// Opening a Bundle checks the container completely before anything is used
// (docs/format.md): the file is a regular non-empty file of at least 8 bytes;
// the header length is within the file and below 100 MB; the header is strict
// JSON of the safetensors shape; every dtype is F32 or I32; every shape matches
// its byte size; data_offsets lie inside the data section, do not overlap and
// together cover it; the common metadata keys (format, version, content_hash)
// are present; the format is the expected one; and content_hash equals the
// SHA-256 of the data section. Any failure throws spaedge::Error naming the
// file and the field. The mapping stays valid for the Bundle's lifetime.
// Replace bundle files by rename (as the writer does): truncating a mapped file
// in place would make later reads fault (SIGBUS), which no reader can prevent.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "spaedge/error.h"

namespace spaedge {

enum class DType { F32, I32 };

const char* dtype_name(DType d);

// One tensor of a bundle. `data` points into the mapping and may be unaligned:
// read through the accessors (memcpy based), never by casting the pointer.
struct TensorView {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    size_t numel = 0;
    size_t begin = 0, end = 0;  // data_offsets, relative to the data section
    const unsigned char* data = nullptr;

    float f32(size_t i) const {
        float v;
        std::memcpy(&v, data + 4 * i, 4);
        return v;
    }
    int32_t i32(size_t i) const {
        int32_t v;
        std::memcpy(&v, data + 4 * i, 4);
        return v;
    }
    void copy_to(void* dst) const { if (numel) std::memcpy(dst, data, 4 * numel); }
    std::string shape_str() const;
};

class Bundle {
public:
    // expected_format: "spaedge-base", "spaedge-task", or "" for either.
    explicit Bundle(const std::string& path, const std::string& expected_format = "");
    ~Bundle();
    Bundle(const Bundle&) = delete;
    Bundle& operator=(const Bundle&) = delete;

    const std::string& path() const { return path_; }
    const std::string& format() const { return format_; }
    const std::string& content_hash() const { return content_hash_; }
    size_t file_size() const { return size_; }
    size_t header_size() const { return header_len_; }

    const std::map<std::string, std::string>& metadata() const { return metadata_; }
    // Value of a required metadata key; throws "<file>: missing metadata key 'k'".
    const std::string& meta(const std::string& key) const;
    const std::string* find_meta(const std::string& key) const;

    // Tensors in file (data offset) order.
    const std::vector<TensorView>& tensors() const { return tensors_; }
    const TensorView* find(const std::string& name) const;
    // Required tensor; throws "<file>: missing tensor 'name'".
    const TensorView& tensor(const std::string& name) const;

    // Throws spaedge::Error("<file>: <msg>").
    [[noreturn]] void fail(const std::string& msg) const;
    // Throws spaedge::Error("<file>: tensor '<name>': <msg>").
    [[noreturn]] void fail_tensor(const std::string& name, const std::string& msg) const;

private:
    void map_file();
    void parse_header();

    std::string path_;
    std::string format_;
    std::string content_hash_;
    int fd_ = -1;
    const unsigned char* base_ = nullptr;
    size_t size_ = 0;
    size_t header_len_ = 0;
    std::map<std::string, std::string> metadata_;
    std::vector<TensorView> tensors_;
    std::map<std::string, size_t> by_name_;
};

}  // namespace spaedge
