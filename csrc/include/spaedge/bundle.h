// spaedge bundle reader: a fully validated safetensors file, read into private memory.
//
// Opening a Bundle checks the container completely before anything is used
// (docs/format.md): the path has no NUL byte; the file is a regular non-empty
// file of at least 8 bytes (FIFOs and devices are refused without blocking);
// the header length is within the file and at most 100,000,000 bytes (the
// safetensors limit); the header is strict JSON of the safetensors shape;
// every dtype is F32, I32, U8 or I8; every shape matches its byte size; data_offsets
// lie inside the data section, do not overlap and together cover it; the
// common metadata keys (format, version, content_hash) are present; the
// format is the expected one; the version is 4 (fp32) or 5 (int8, with
// metadata 'precision' = 'int8'; docs/int8.md), an I8 tensor only in an int8
// bundle; and content_hash equals the
// canonical hash of the metadata, the tensor table and the data section.
// Any failure throws spaedge::Error naming the file and the field.
//
// The file is read (not mapped) into memory the Bundle owns, then closed: what
// happens to the file afterwards (truncated, overwritten in place, deleted)
// cannot change or fault what was checked. A file that changes while it is
// being read is refused (a short read, or a content hash mismatch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "spaedge/error.h"

namespace spaedge {

enum class DType { F32, I32, U8, I8 };

const char* dtype_name(DType d);
// Bytes per element: 4 (F32, I32) or 1 (U8, I8).
size_t dtype_size(DType d);

// One tensor of a bundle. `data` points into the Bundle's private copy of the
// data section (64-byte aligned; a tensor after a U8 tensor of odd length is
// not 4-byte aligned, so code that takes a float* checks), or is null when
// the Bundle was opened without its data (BundleOptions::load_data). Read
// through the accessors (memcpy based), each for its dtype.
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
  uint8_t u8(size_t i) const { return data[i]; }
  int8_t i8(size_t i) const { return int8_t(data[i]); }
  // F32 and I32 only (4-byte elements).
  void copy_to(void* dst) const {
    if (numel) std::memcpy(dst, data, 4 * numel);
  }
  std::string shape_str() const;
};

// How a Bundle reads its file. The default reads and checks everything.
struct BundleOptions {
  // true: the data section is read into memory the Bundle owns. false: only
  // the header is kept (TensorView::data is null); with verify_hash the data
  // section is streamed through the hash in 1 MB pieces, so a file of any
  // size is checked in constant memory.
  bool load_data = true;
  // false: content_hash is not compared with the file (computed_hash() is
  // still set when the data is loaded). For tools that only list a header.
  bool verify_hash = true;
};

// Format version of fp32 bundles, which this runtime reads and the toolchain
// writes (docs/format.md); int8 bundles are kFormatVersionInt8 (docs/int8.md).
constexpr const char* kFormatVersion = "4";
constexpr const char* kFormatVersionInt8 = "5";
// Largest magnitude of any float in a task bundle (docs/reliability.md, "Value bounds").
constexpr float kMaxTaskValue = 1e6f;
// Header length limit, the same as safetensors' (bytes).
constexpr uint64_t kMaxHeaderBytes = 100000000;

class Bundle {
 public:
  // expected_format: "spaedge-base", "spaedge-task", or "" for either.
  explicit Bundle(const std::string& path, const std::string& expected_format = "",
                  const BundleOptions& options = BundleOptions());
  ~Bundle();
  Bundle(const Bundle&) = delete;
  Bundle& operator=(const Bundle&) = delete;

  const std::string& path() const { return path_; }
  const std::string& format() const { return format_; }
  const std::string& content_hash() const { return content_hash_; }
  // The precision of the bundle's numbers: "fp32" (version 4) or "int8" (version 5).
  const std::string& precision() const { return precision_; }
  bool int8() const { return precision_ == "int8"; }
  // The content hash computed from the file ("" when it was not computed:
  // verify_hash off and the data not loaded). Equals content_hash() once verified.
  const std::string& computed_hash() const { return computed_hash_; }
  bool data_loaded() const { return data_ != nullptr || data_size_ == 0; }
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
  void read_file(const BundleOptions& options);
  void parse_header(const std::string& header);
  void check_common(const std::string& expected_format, const BundleOptions& options);
  // A task bundle's floats: finite and within +-kMaxTaskValue, naming the tensor.
  void check_task_values() const;

  struct FreeBytes {
    void operator()(unsigned char* p) const { std::free(p); }
  };

  std::string path_;
  std::string format_;
  std::string content_hash_;
  std::string precision_ = "fp32";
  std::string computed_hash_;
  std::unique_ptr<unsigned char, FreeBytes> storage_;  // the data section, when loaded
  const unsigned char* data_ = nullptr;
  size_t data_size_ = 0;
  size_t size_ = 0;
  size_t header_len_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> by_name_;
};

// ---- inspection (spaedge info) ---------------------------------------------------

struct TensorSummary {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// What a bundle says, checked with the runtime's own rules without loading
// its data: the container (as Bundle), the content hash when verify_hash (the
// data section streamed through it in constant memory), and the metadata of
// its kind: a base's graph and its weights' table entries; a task's
// base_hash, task, method, labels, input, info and shared_adapters. Not
// checked here: tensor values, and whether a task fits a base (load it).
struct BundleSummary {
  std::string path, format, version, content_hash;
  bool hash_verified = false;  // the content hash was recomputed and matched
  size_t file_bytes = 0, header_bytes = 0;
  std::map<std::string, std::string> metadata;  // every key, as stored
  std::vector<TensorSummary> tensors;           // in data order
  uint64_t numbers = 0;                         // elements of all tensors
  // spaedge-base
  std::string model;
  int input_channels = 0;
  size_t nodes = 0, convs = 0;
  // spaedge-task
  std::string task, method, base_hash, info;  // info: JSON object text ("{}" when absent)
  std::vector<std::string> labels;
  int channels = 0, height = 0, width = 0;
  std::vector<float> mean, std;
  std::map<std::string, std::string> shared_adapters;
};

// Throws spaedge::Error naming the file and the field, as loading would.
BundleSummary inspect_bundle(const std::string& path, bool verify_hash = true);

}  // namespace spaedge
