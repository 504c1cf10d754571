// SHA-256 per FIPS 180-4.
#include "runtime/sha256.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define SPAEDGE_SHA_X86 1
#endif
#if defined(__aarch64__) && defined(__linux__) && defined(__GNUC__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_SHA2
#define HWCAP_SHA2 (1 << 6)
#endif
#define SPAEDGE_SHA_ARM 1
#endif

namespace spaedge {
namespace {

constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) {
  return (x >> n) | (x << (32 - n));
}

}  // namespace

Sha256::Sha256() {
  const uint32_t init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::memcpy(h_, init, sizeof(h_));
}

namespace {

void block_portable(uint32_t* h_, const uint8_t* p) {
  uint32_t w[64];
  for (int t = 0; t < 16; ++t) {
    w[t] = (uint32_t(p[4 * t]) << 24) | (uint32_t(p[4 * t + 1]) << 16) |
           (uint32_t(p[4 * t + 2]) << 8) | uint32_t(p[4 * t + 3]);
  }
  for (int t = 16; t < 64; ++t) {
    uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
    uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
    w[t] = w[t - 16] + s0 + w[t - 7] + s1;
  }
  uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3];
  uint32_t e = h_[4], f = h_[5], g = h_[6], h = h_[7];
  for (int t = 0; t < 64; ++t) {
    uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = h + S1 + ch + kK[t] + w[t];
    uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = S0 + maj;
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h_[0] += a;
  h_[1] += b;
  h_[2] += c;
  h_[3] += d;
  h_[4] += e;
  h_[5] += f;
  h_[6] += g;
  h_[7] += h;
}

#ifdef SPAEDGE_SHA_X86
// The SHA extensions keep the state as ABEF / CDGH and run two rounds per
// sha256rnds2; the message schedule is four words at a time (msg1/msg2).
__attribute__((target("sha,sse4.1"))) void blocks_shani(uint32_t* state, const uint8_t* p,
                                                        size_t n) {
  const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i tmp = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state));     // DCBA
  __m128i s1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(state + 4));  // HGFE
  tmp = _mm_shuffle_epi32(tmp, 0xB1);                                         // CDAB
  s1 = _mm_shuffle_epi32(s1, 0x1B);                                           // EFGH
  __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                   // ABEF
  s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                        // CDGH
  for (; n > 0; --n, p += 64) {
    const __m128i save0 = s0, save1 = s1;
    __m128i w[4];
    for (int i = 0; i < 4; ++i)
      w[i] = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * i)), mask);
    for (int i = 0; i < 16; ++i) {
      if (i >= 4) {
        // W[i..i+3] from the previous sixteen words.
        __m128i x0 = w[i % 4], x1 = w[(i + 1) % 4], x2 = w[(i + 2) % 4], x3 = w[(i + 3) % 4];
        w[i % 4] = _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(x0, x1), _mm_alignr_epi8(x3, x2, 4)), x3);
      }
      __m128i m =
          _mm_add_epi32(w[i % 4], _mm_loadu_si128(reinterpret_cast<const __m128i*>(kK + 4 * i)));
      s1 = _mm_sha256rnds2_epu32(s1, s0, m);
      m = _mm_shuffle_epi32(m, 0x0E);
      s0 = _mm_sha256rnds2_epu32(s0, s1, m);
    }
    s0 = _mm_add_epi32(s0, save0);
    s1 = _mm_add_epi32(s1, save1);
  }
  tmp = _mm_shuffle_epi32(s0, 0x1B);    // FEBA
  s1 = _mm_shuffle_epi32(s1, 0xB1);     // DCHG
  s0 = _mm_blend_epi16(tmp, s1, 0xF0);  // DCBA
  s1 = _mm_alignr_epi8(s1, tmp, 8);     // HGFE
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state), s0);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state + 4), s1);
}

bool cpu_has_shani() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool ssse3 = c & (1u << 9), sse41 = c & (1u << 19);
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool sha = b & (1u << 29);
  return ssse3 && sse41 && sha;
}
#endif

#ifdef SPAEDGE_SHA_ARM
// ARMv8 SHA-256 instructions: vsha256h/h2 run four rounds on ABCD/EFGH.
__attribute__((target("arch=armv8-a+crypto"))) void blocks_armv8(uint32_t* state, const uint8_t* p,
                                                                 size_t n) {
  uint32x4_t abcd = vld1q_u32(state), efgh = vld1q_u32(state + 4);
  for (; n > 0; --n, p += 64) {
    const uint32x4_t save_abcd = abcd, save_efgh = efgh;
    uint32x4_t w[4];
    for (int i = 0; i < 4; ++i) w[i] = vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p + 16 * i)));
    for (int i = 0; i < 16; ++i) {
      if (i >= 4)
        w[i % 4] = vsha256su1q_u32(vsha256su0q_u32(w[i % 4], w[(i + 1) % 4]), w[(i + 2) % 4],
                                   w[(i + 3) % 4]);
      const uint32x4_t t = vaddq_u32(w[i % 4], vld1q_u32(kK + 4 * i));
      const uint32x4_t prev = abcd;
      abcd = vsha256hq_u32(abcd, efgh, t);
      efgh = vsha256h2q_u32(efgh, prev, t);
    }
    abcd = vaddq_u32(abcd, save_abcd);
    efgh = vaddq_u32(efgh, save_efgh);
  }
  vst1q_u32(state, abcd);
  vst1q_u32(state + 4, efgh);
}
#endif

enum class Impl { Portable, ShaNi, Armv8 };

Impl choose() {
  // SPAEDGE_SHA=portable forces the reference path (tests compare the two).
  const char* env = std::getenv("SPAEDGE_SHA");
  if (env && std::strcmp(env, "portable") == 0) return Impl::Portable;
#ifdef SPAEDGE_SHA_X86
  if (cpu_has_shani()) return Impl::ShaNi;
#endif
#ifdef SPAEDGE_SHA_ARM
  if (getauxval(AT_HWCAP) & HWCAP_SHA2) return Impl::Armv8;
#endif
  return Impl::Portable;
}

std::atomic<bool> g_force_portable{false};

Impl active_impl() {
  static const Impl impl = choose();
  return g_force_portable.load(std::memory_order_relaxed) ? Impl::Portable : impl;
}

}  // namespace

void Sha256::force_portable(bool on) {
  g_force_portable.store(on);
}

const char* Sha256::implementation() {
  switch (active_impl()) {
    case Impl::ShaNi:
      return "sha-ni";
    case Impl::Armv8:
      return "armv8-sha2";
    default:
      return "portable";
  }
}

void Sha256::blocks(const uint8_t* p, size_t n) {
#ifdef SPAEDGE_SHA_X86
  if (active_impl() == Impl::ShaNi) {
    blocks_shani(h_, p, n);
    return;
  }
#endif
#ifdef SPAEDGE_SHA_ARM
  if (active_impl() == Impl::Armv8) {
    blocks_armv8(h_, p, n);
    return;
  }
#endif
  for (size_t i = 0; i < n; ++i) block_portable(h_, p + 64 * i);
}

void Sha256::update(const void* data, size_t len) {
  if (len == 0) return;  // data may be null then (an empty data section)
  const uint8_t* p = static_cast<const uint8_t*>(data);
  total_ += len;
  if (buf_len_ > 0) {
    size_t take = 64 - buf_len_;
    if (take > len) take = len;
    std::memcpy(buf_ + buf_len_, p, take);
    buf_len_ += take;
    p += take;
    len -= take;
    if (buf_len_ < 64) return;
    blocks(buf_, 1);
    buf_len_ = 0;
  }
  if (len >= 64) {
    const size_t n = len / 64;
    blocks(p, n);
    p += 64 * n;
    len -= 64 * n;
  }
  if (len > 0) {
    std::memcpy(buf_, p, len);
    buf_len_ = len;
  }
}

void Sha256::finish(uint8_t digest[32]) {
  uint64_t bits = total_ * 8;
  uint8_t pad[72] = {0x80};
  size_t pad_len = (buf_len_ < 56) ? (56 - buf_len_) : (120 - buf_len_);
  uint8_t len_be[8];
  for (int i = 0; i < 8; ++i) len_be[i] = uint8_t(bits >> (56 - 8 * i));
  update(pad, pad_len);
  update(len_be, 8);
  for (int i = 0; i < 8; ++i) {
    digest[4 * i] = uint8_t(h_[i] >> 24);
    digest[4 * i + 1] = uint8_t(h_[i] >> 16);
    digest[4 * i + 2] = uint8_t(h_[i] >> 8);
    digest[4 * i + 3] = uint8_t(h_[i]);
  }
}

std::string to_hex(const uint8_t* bytes, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = digits[bytes[i] >> 4];
    s[2 * i + 1] = digits[bytes[i] & 15];
  }
  return s;
}

std::string Sha256::hex(const void* data, size_t len) {
  Sha256 h;
  h.update(data, len);
  uint8_t d[32];
  h.finish(d);
  return to_hex(d, 32);
}

}  // namespace spaedge
