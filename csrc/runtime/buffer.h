// 64-byte aligned float buffer that only grows. Internal header.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace spaedge {

// `bytes` of 64-byte aligned memory (free with std::free), or null. Large
// blocks (base re-layout, the base's private copy, packed weights, arena)
// are put on 2 MB pages where the kernel allows it (THP "madvise" mode): a
// switch walks tens of MB a few rows at a time, and 4 KB pages make that a
// TLB miss every few rows.
inline void* aligned_bytes(size_t bytes) {
  bytes = (bytes + 63) / 64 * 64;
  void* q = nullptr;
#ifdef __linux__
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes >= 2 * kHuge) {
    bytes = (bytes + kHuge - 1) / kHuge * kHuge;
    q = std::aligned_alloc(kHuge, bytes);
    if (q) madvise(q, bytes, MADV_HUGEPAGE);  // a hint; failure is fine
  }
#endif
  if (!q) q = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  return q;
}

class FloatBuffer {
 public:
  FloatBuffer() = default;
  ~FloatBuffer() { std::free(p_); }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  FloatBuffer(FloatBuffer&& o) noexcept : p_(o.p_), cap_(o.cap_), size_(o.size_) {
    o.p_ = nullptr;
    o.cap_ = o.size_ = 0;
  }
  FloatBuffer& operator=(FloatBuffer&& o) noexcept {
    if (this != &o) {
      std::free(p_);
      p_ = o.p_;
      cap_ = o.cap_;
      size_ = o.size_;
      o.p_ = nullptr;
      o.cap_ = o.size_ = 0;
    }
    return *this;
  }

  // Makes room for n floats (contents not preserved when it grows).
  void resize(size_t n) {
    if (n > cap_) {
      void* q = aligned_bytes(n * sizeof(float));
      if (!q) throw std::bad_alloc();
      std::free(p_);
      p_ = static_cast<float*>(q);
      cap_ = n;
    }
    size_ = n;
  }
  void release() {
    std::free(p_);
    p_ = nullptr;
    cap_ = size_ = 0;
  }
  float* data() { return p_; }
  const float* data() const { return p_; }
  size_t size() const { return size_; }
  size_t capacity() const { return cap_; }

 private:
  float* p_ = nullptr;
  size_t cap_ = 0;
  size_t size_ = 0;
};

// Rounds a float count up to a whole number of 64-byte lines.
inline size_t round_floats(size_t n) {
  return (n + 15) / 16 * 16;
}

}  // namespace spaedge
