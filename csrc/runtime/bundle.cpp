// Bundle reader: the file read into private memory, strict validation of the
// safetensors container, the canonical content hash (bundle.h, docs/format.md).
#include "spaedge/bundle.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>

#include <algorithm>
#include <cerrno>
#include <limits>

#include "runtime/buffer.h"
#include "runtime/content_hash.h"
#include "runtime/json.h"
#include "runtime/sha256.h"
#include "runtime/testing.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "spaedge bundles are little-endian; this runtime reads them on little-endian hosts only"
#endif

namespace spaedge {

namespace testing {
void (*bundle_opened)(const std::string& path) = nullptr;
}  // namespace testing

namespace {
constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr size_t kChunk = size_t(1) << 20;  // streaming hash piece

void put_u64(Sha256& h, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; ++i) b[i] = uint8_t(v >> (8 * i));
  h.update(b, 8);
}

void put_bytes(Sha256& h, const std::string& s) {
  put_u64(h, s.size());
  h.update(s.data(), s.size());
}

// Closes a descriptor when the reader is done with it (or throws).
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

void hash_header(Sha256& h, const std::map<std::string, std::string>& metadata,
                 const std::vector<TensorView>& tensors) {
  // std::map orders std::string keys bytewise (as unsigned char): UTF-8 byte order.
  put_u64(h, metadata.size() - metadata.count("content_hash"));
  for (const auto& kv : metadata) {
    if (kv.first == "content_hash") continue;
    put_bytes(h, kv.first);
    put_bytes(h, kv.second);
  }
  std::vector<const TensorView*> by_name;
  for (const auto& t : tensors) by_name.push_back(&t);
  std::sort(by_name.begin(), by_name.end(),
            [](const TensorView* a, const TensorView* b) { return a->name < b->name; });
  put_u64(h, by_name.size());
  for (const TensorView* t : by_name) {
    put_bytes(h, t->name);
    put_bytes(h, dtype_name(t->dtype));
    put_u64(h, t->shape.size());
    for (int64_t d : t->shape) put_u64(h, uint64_t(d));
    put_u64(h, t->begin);
    put_u64(h, t->end);
  }
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32:
      return "F32";
    case DType::I32:
      return "I32";
    case DType::U8:
      return "U8";
    case DType::I8:
      return "I8";
  }
  return "?";
}

size_t dtype_size(DType d) {
  return d == DType::U8 || d == DType::I8 ? 1 : 4;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void Bundle::fail(const std::string& msg) const {
  throw Error(path_ + ": " + msg);
}

void Bundle::fail_tensor(const std::string& name, const std::string& msg) const {
  throw Error(path_ + ": tensor '" + name + "': " + msg);
}

Bundle::Bundle(const std::string& path, const std::string& expected_format,
               const BundleOptions& options)
    : path_(path) {
  if (path_.find('\0') != std::string::npos)
    fail("path contains a NUL byte (the file name would be cut there)");
  read_file(options);
  check_common(expected_format, options);
  if (expected_format == "spaedge-task" && data_ != nullptr) check_task_values();
}

void Bundle::check_task_values() const {
  // Every float of a task bundle (adapter factors and deltas, BatchNorm,
  // biases, the head) is finite and |x| <= kMaxTaskValue: a merged rank-r
  // product is then at most r * 1e12, far below float32's 3.4e38, and no
  // trained weight comes near (docs/reliability.md, "Value bounds").
  for (const TensorView& t : tensors_) {
    if (t.dtype != DType::F32) continue;
    for (size_t i = 0; i < t.numel; ++i) {
      const float v = t.f32(i);
      if (!std::isfinite(v)) fail_tensor(t.name, "element " + std::to_string(i) + " is not finite");
      if (std::fabs(v) > kMaxTaskValue) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%g", double(v));
        fail_tensor(t.name, "element " + std::to_string(i) + " is " + buf +
                                ", beyond the +-1e6 a task bundle's values may reach (merged "
                                "weights that large cannot be meaningful in float32)");
      }
    }
  }
}

Bundle::~Bundle() = default;

namespace {

// Reads exactly n bytes at `off`; a short read means the file shrank while it was read.
void read_at(const Bundle& b, int fd, void* dst, size_t n, uint64_t off, uint64_t file_size) {
  auto* p = static_cast<unsigned char*>(dst);
  size_t done = 0;
  while (done < n) {
    const size_t want = std::min(n - done, size_t(1) << 30);
    const ssize_t r = ::pread(fd, p + done, want, off_t(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      b.fail(std::string("cannot read: ") + std::strerror(e));
    }
    if (r == 0) {
      struct stat now;
      const std::string size_now = fstat(fd, &now) == 0 ? std::to_string(now.st_size) : "?";
      b.fail("file changed while being read: it was " + std::to_string(file_size) +
             " bytes when opened and is " + size_now +
             " now (truncated during the load? replace bundles by writing a new file and "
             "renaming it)");
    }
    done += size_t(r);
  }
}

}  // namespace

void Bundle::read_file(const BundleOptions& options) {
  // O_NONBLOCK: opening a FIFO must not hang; it is refused below as not a regular file.
  Fd f;
  f.fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (f.fd < 0) {
    int e = errno;
    fail(std::string("cannot open: ") + std::strerror(e));
  }
  struct stat st;
  if (fstat(f.fd, &st) != 0) {
    int e = errno;
    fail(std::string("cannot stat: ") + std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) fail("is a directory, not a bundle file");
  if (!S_ISREG(st.st_mode)) fail("is not a regular file");
  if (st.st_size == 0) fail("empty file (0 bytes), not a bundle");
  if (st.st_size < 8)
    fail("file is " + std::to_string(st.st_size) +
         " bytes, shorter than the 8-byte safetensors header length");
  if (uint64_t(st.st_size) > uint64_t(std::numeric_limits<size_t>::max() / 2))
    fail("file too large to read");
  size_ = size_t(st.st_size);
  if (testing::bundle_opened) testing::bundle_opened(path_);

  unsigned char len[8];
  read_at(*this, f.fd, len, 8, 0, size_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  const uint64_t avail = size_ - 8;
  if (n > avail)
    fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(avail) +
         " bytes after the length field (truncated file or not a safetensors file)");
  if (n > kMaxHeaderBytes)
    fail("header length " + std::to_string(n) + " is absurd (limit " +
         std::to_string(kMaxHeaderBytes) + " bytes, as safetensors)");
  if (n < 2) fail("header length " + std::to_string(n) + " is too small for a JSON header");
  header_len_ = size_t(n);
  std::string header(header_len_, '\0');
  read_at(*this, f.fd, &header[0], header_len_, 8, size_);
  parse_header(header);

  data_size_ = size_ - 8 - header_len_;
  const uint64_t data_at = 8 + header_len_;
  if (options.load_data) {
    if (data_size_ > 0) {
      // 64-byte aligned: every tensor (offsets are multiples of 4) is float aligned.
      storage_.reset(static_cast<unsigned char*>(aligned_bytes(data_size_)));
      if (!storage_)
        fail("cannot allocate " + std::to_string(data_size_) + " bytes for the data section");
      read_at(*this, f.fd, storage_.get(), data_size_, data_at, size_);
      data_ = storage_.get();
    }
    for (auto& t : tensors_) t.data = data_ ? data_ + t.begin : nullptr;
    Sha256 h;
    hash_header(h, metadata_, tensors_);
    h.update(data_, data_size_);
    uint8_t d[32];
    h.finish(d);
    computed_hash_ = to_hex(d, 32);
  } else if (options.verify_hash) {
    Sha256 h;
    hash_header(h, metadata_, tensors_);
    std::unique_ptr<unsigned char[]> buf(
        new unsigned char[std::min(kChunk, std::max<size_t>(data_size_, 1))]);
    for (size_t done = 0; done < data_size_;) {
      const size_t k = std::min(kChunk, data_size_ - done);
      read_at(*this, f.fd, buf.get(), k, data_at + done, size_);
      h.update(buf.get(), k);
      done += k;
    }
    uint8_t d[32];
    h.finish(d);
    computed_hash_ = to_hex(d, 32);
  }
}

void Bundle::check_common(const std::string& expected_format, const BundleOptions& options) {
  const std::string& fmt = meta("format");
  if (fmt != "spaedge-base" && fmt != "spaedge-task")
    fail("metadata 'format' is '" + fmt + "', expected 'spaedge-base' or 'spaedge-task'");
  if (!expected_format.empty() && fmt != expected_format)
    fail("is a " + fmt + " bundle, expected a " + expected_format + " bundle");
  format_ = fmt;
  const std::string& ver = meta("version");
  if (ver == "1")
    fail(
        "metadata 'version' is '1': format version 1 is no longer read (its content hash "
        "does not cover the metadata); delete the file and repack it with this spaedge "
        "(`spaedge pack --retrain`, or re-run the packing that wrote it)");
  if (ver == "2")
    fail(
        "metadata 'version' is '2': format version 2 is no longer read (its task bundles do not "
        "store the adapter rank); delete the file and repack it with this spaedge "
        "(`spaedge pack --retrain`, or re-run the packing that wrote it)");
  if (ver == "3")
    fail(
        "metadata 'version' is '3': format version 3 is no longer read (its Pear bundles share "
        "adapters only between convs of equal kept channels); delete the file and repack it "
        "with this spaedge (`spaedge pack --retrain`, or re-run the packing that wrote it)");
  if (ver != kFormatVersion && ver != kFormatVersionInt8)
    fail("metadata 'version' is '" + ver + "', this runtime reads format versions " +
         kFormatVersion + " (fp32) and " + kFormatVersionInt8 + " (int8) only");
  // docs/int8.md, (a): version 4 is fp32, version 5 is int8, said by 'precision'.
  const std::string* prec = find_meta("precision");
  if (ver == kFormatVersion) {
    if (prec && *prec != "fp32")
      fail("metadata 'precision' is '" + *prec + "' in a version " + kFormatVersion +
           " bundle, which is fp32 (int8 bundles are version " + kFormatVersionInt8 + ")");
    for (const TensorView& t : tensors_)
      if (t.dtype == DType::I8)
        fail_tensor(t.name, "dtype 'I8' in a fp32 bundle (only int8 bundles, version " +
                                std::string(kFormatVersionInt8) + ", hold I8 tensors)");
  } else {
    if (!prec)
      fail("missing metadata key 'precision': version " + std::string(kFormatVersionInt8) +
           " is for int8 bundles, which say 'precision' = 'int8'");
    if (*prec != "int8")
      fail("metadata 'precision' is '" + *prec + "', expected 'int8' in a version " +
           kFormatVersionInt8 + " bundle");
    precision_ = "int8";
  }
  const std::string& h = meta("content_hash");
  bool hex = h.size() == 64;
  for (char c : h)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) hex = false;
  if (!hex) fail("metadata 'content_hash' is not 64 lowercase hex digits");
  if (options.verify_hash && computed_hash_ != h)
    fail("metadata 'content_hash' mismatch: the bundle says " + h +
         " but its metadata, tensor "
         "table and data hash to " +
         computed_hash_ + " (file corrupted, edited or changed while being read)");
  content_hash_ = h;
}

namespace {

// Non-negative integer from a JSON number (exact), or -1.
int64_t as_count(const json::Value& v) {
  if (!v.is(json::Type::Number)) return -1;
  if (v.is_integer) return v.integer >= 0 ? v.integer : -1;
  return -1;
}

}  // namespace

void Bundle::parse_header(const std::string& header) {
  if (header[0] != '{') fail("header does not start with '{' (not a safetensors file)");
  const std::string ctx = path_ + ": header";
  json::Value root = json::parse(header.data(), header.size(), ctx);
  if (!root.is(json::Type::Object)) fail("header JSON is not an object");

  const size_t data_size = size_ - 8 - header_len_;
  bool have_meta = false;
  for (const auto& kv : root.object) {
    const std::string& key = kv.first;
    const json::Value& v = kv.second;
    if (key == "__metadata__") {
      have_meta = true;
      if (!v.is(json::Type::Object))
        fail(std::string("header '__metadata__' is a ") + json::type_name(v.type) +
             ", expected an object of strings");
      for (const auto& m : v.object) {
        if (!m.second.is(json::Type::String))
          fail("metadata '" + m.first + "' is a " + json::type_name(m.second.type) +
               ", safetensors metadata values must be strings");
        metadata_[m.first] = m.second.string;
      }
      continue;
    }
    if (key.empty()) fail("header has a tensor with an empty name");
    if (!v.is(json::Type::Object))
      fail_tensor(key, std::string("header entry is a ") + json::type_name(v.type) +
                           ", expected an object");
    TensorView t;
    t.name = key;
    const json::Value* dt = v.find("dtype");
    const json::Value* sh = v.find("shape");
    const json::Value* off = v.find("data_offsets");
    if (!dt) fail_tensor(key, "missing 'dtype'");
    if (!sh) fail_tensor(key, "missing 'shape'");
    if (!off) fail_tensor(key, "missing 'data_offsets'");
    for (const auto& f : v.object)
      if (f.first != "dtype" && f.first != "shape" && f.first != "data_offsets")
        fail_tensor(key, "unknown field '" + f.first + "'");
    if (!dt->is(json::Type::String)) fail_tensor(key, "'dtype' is not a string");
    if (dt->string == "F32")
      t.dtype = DType::F32;
    else if (dt->string == "I32")
      t.dtype = DType::I32;
    else if (dt->string == "U8")
      t.dtype = DType::U8;
    else if (dt->string == "I8")
      t.dtype = DType::I8;
    else
      fail_tensor(key, "dtype '" + dt->string +
                           "' not allowed (spaedge bundles hold only F32, I32, U8 and I8)");
    if (!sh->is(json::Type::Array)) fail_tensor(key, "'shape' is not an array");
    if (sh->array.size() > 8) fail_tensor(key, "'shape' has more than 8 dimensions");
    uint64_t numel = 1;
    for (const auto& d : sh->array) {
      int64_t x = as_count(d);
      if (x < 0) fail_tensor(key, "'shape' entries must be non-negative integers");
      if (x > kMaxDim) fail_tensor(key, "'shape' entry " + std::to_string(x) + " is absurd");
      t.shape.push_back(x);
      if (x != 0 && numel > (uint64_t(1) << 62) / uint64_t(x))
        fail_tensor(key, "'shape' " + t.shape_str() + " overflows");
      numel *= uint64_t(x);
    }
    if (!off->is(json::Type::Array) || off->array.size() != 2)
      fail_tensor(key, "'data_offsets' must be an array [begin, end]");
    int64_t b = as_count(off->array[0]);
    int64_t e = as_count(off->array[1]);
    if (b < 0 || e < 0) fail_tensor(key, "'data_offsets' must be non-negative integers");
    if (b > e)
      fail_tensor(key, "'data_offsets' [" + std::to_string(b) + ", " + std::to_string(e) +
                           "] has begin after end");
    if (uint64_t(e) > data_size)
      fail_tensor(key, "'data_offsets' [" + std::to_string(b) + ", " + std::to_string(e) +
                           "] out of range: the data section has " + std::to_string(data_size) +
                           " bytes");
    const uint64_t bytes = numel * dtype_size(t.dtype);  // numel <= 2^62: no overflow
    if (bytes != uint64_t(e - b))
      fail_tensor(key, "'shape' " + t.shape_str() + " of " + dt->string + " needs " +
                           std::to_string(bytes) + " bytes but 'data_offsets' [" +
                           std::to_string(b) + ", " + std::to_string(e) + "] hold " +
                           std::to_string(e - b));
    t.numel = size_t(numel);
    t.begin = size_t(b);
    t.end = size_t(e);
    tensors_.push_back(std::move(t));
  }
  if (!have_meta) fail("header has no '__metadata__' (not a spaedge bundle)");

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorView& a, const TensorView& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t pos = 0;
  const TensorView* prev = nullptr;
  for (const auto& t : tensors_) {
    if (t.begin < pos)
      fail_tensor(t.name, "'data_offsets' [" + std::to_string(t.begin) + ", " +
                              std::to_string(t.end) + "] overlap tensor '" + prev->name + "' [" +
                              std::to_string(prev->begin) + ", " + std::to_string(prev->end) + "]");
    if (t.begin > pos)
      fail("data section bytes [" + std::to_string(pos) + ", " + std::to_string(t.begin) +
           ") belong to no tensor (data_offsets must cover the data section)");
    pos = t.end;
    prev = &t;
  }
  if (pos != data_size)
    fail("data section bytes [" + std::to_string(pos) + ", " + std::to_string(data_size) +
         ") belong to no tensor (data_offsets must cover the data section)");
  for (size_t i = 0; i < tensors_.size(); ++i) by_name_[tensors_[i].name] = i;
}

const std::string& Bundle::meta(const std::string& key) const {
  auto it = metadata_.find(key);
  if (it == metadata_.end()) fail("missing metadata key '" + key + "'");
  return it->second;
}

const std::string* Bundle::find_meta(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const TensorView* Bundle::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& Bundle::tensor(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail("missing tensor '" + name + "'");
  return *t;
}

}  // namespace spaedge
