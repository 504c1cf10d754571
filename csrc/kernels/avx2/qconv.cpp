// AVX2 int8 convolution (qgemm.h), exact without VNNI: activations are
// widened to int16 in the scratch copy, weights sign-extended to int16 as
// they are loaded (vpmovsxbw), and vpmaddwd sums pairs of int16 products
// into int32 (exact: no vpmaddubsw, whose int16 sums saturate). A tile is
// 4 rows x 8 channels (half a panel); each accumulator holds two partial
// sums per channel (K rows 4g..4g+1 and 4g+2..4g+3), added at the end
// (vphaddd). Requantization is QEpilogue's formula in 8 float lanes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/avx2/simd.h"
#include "kernels/qapply.h"
#include "kernels/qgemm.h"

namespace spaedge::kernels::avx2 {

namespace {

using qgemm::QTile;

// QEpilogue's formula on 8 channels of one row (nr valid).
inline void requant8(__m256i acc, const QTile<int16_t>& t, int r) {
  const QEpilogue& ep = *t.ep;
  const int n = t.nr;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
  const __m256i wsum = _mm256_maskload_epi32(t.wsum, mask);
  const __m256i corr = _mm256_mullo_epi32(wsum, _mm256_set1_epi32(t.zp));
  const __m256 mul = _mm256_maskload_ps(t.mul, mask);
  const __m256 add = t.add ? _mm256_maskload_ps(t.add, mask) : _mm256_setzero_ps();
  __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc, corr)), mul, add);
  if (t.res) {
    alignas(8) uint8_t rb[8] = {};
    std::memcpy(rb, t.res + r * t.ldc, static_cast<size_t>(n));
    const __m256i ri = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rb)));
    const __m256 rf = _mm256_cvtepi32_ps(_mm256_sub_epi32(ri, _mm256_set1_epi32(ep.res_zp)));
    f = _mm256_fmadd_ps(rf, _mm256_set1_ps(ep.res_mul), f);
  }
  const float lo = ep.relu ? 0.0f : static_cast<float>(-ep.out_zp);
  f = _mm256_min_ps(_mm256_max_ps(f, _mm256_set1_ps(lo)),
                    _mm256_set1_ps(static_cast<float>(255 - ep.out_zp)));
  const __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(f), _mm256_set1_epi32(ep.out_zp));
  const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
  const __m128i b8 = _mm_packus_epi16(w16, w16);
  uint8_t* c = t.c + r * t.ldc;
  if (n == 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(c), b8);
  } else {
    alignas(8) uint8_t ob[8];
    _mm_storel_epi64(reinterpret_cast<__m128i*>(ob), b8);
    std::memcpy(c, ob, static_cast<size_t>(n));
  }
}

struct QIsa {
  using Elem = int16_t;
  static Elem load(uint8_t q) { return q; }
  static int zp_corr(int in_zp) { return in_zp; }
  static constexpr int MR = 4, NT = 8;

  template <int R>
  static void micro(const QTile<Elem>& t) {
    __m256i lo[R], hi[R];
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
    const int8_t* b = t.b + t.sub * qgemm::kGroup;
    for (int s = 0; s < t.nseg; ++s) {
      const int16_t* p[R];
      for (int r = 0; r < R; ++r) p[r] = t.a[r] + s * t.jump;
      for (int gi = 0; gi < t.groups; ++gi, b += qgemm::kNR * qgemm::kGroup) {
        const __m256i w0 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
        const __m256i w1 =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
        for (int r = 0; r < R; ++r) {
          int64_t v;
          std::memcpy(&v, p[r] + gi * qgemm::kGroup, sizeof v);
          const __m256i x = _mm256_set1_epi64x(v);
          lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(x, w0));
          hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(x, w1));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      // [c0 c1 c4 c5 | c2 c3 c6 c7] -> channel order
      const __m256i h = _mm256_hadd_epi32(lo[r], hi[r]);
      requant8(_mm256_permute4x64_epi64(h, _MM_SHUFFLE(3, 1, 2, 0)), t, r);
    }
  }

  static void tile(int rows, const QTile<Elem>& t) {
    switch (rows) {
      case 4:
        micro<4>(t);
        break;
      case 3:
        micro<3>(t);
        break;
      case 2:
        micro<2>(t);
        break;
      default:
        micro<1>(t);
        break;
    }
  }
};

// qapply.h's row maximum (max_k |f32(r[k] * s)|, NaN skipped): vmaxps(a, m)
// returns its second operand when either is NaN, and m never is.
struct QApplyOps {
  static float row_max(const float* r, size_t n, float s) {
    const __m256 sv = _mm256_set1_ps(s);
    const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 m0 = _mm256_setzero_ps(), m1 = m0;
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
      m0 = _mm256_max_ps(_mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(r + k), sv), abs), m0);
      m1 = _mm256_max_ps(_mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(r + k + 8), sv), abs), m1);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
    float m = 0.0f;
    for (float v : lanes) m = v > m ? v : m;
    for (; k < n; ++k) {
      const float a = std::fabs(r[k] * s);
      m = a > m ? a : m;
    }
    return m;
  }

  // qapply::quantize_run 32 at a time: the same operations (vmaxps(x, lo)
  // returns lo for a NaN x), truncation of integers, packed in order.
  static int32_t quantize_run(const float* r, int n, int n4, float s, float ws, int8_t* q) {
    const __m256 sv = _mm256_set1_ps(s), wv = _mm256_set1_ps(ws);
    const __m256 rnd = _mm256_set1_ps(qapply::kRound);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i acc = _mm256_setzero_si256();
    int c = 0;
    for (; c + 32 <= n; c += 32) {
      __m256i v[4];
      for (int u = 0; u < 4; ++u) {
        __m256 x = _mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(r + c + 8 * u), sv), wv);
        x = _mm256_sub_ps(_mm256_add_ps(x, rnd), rnd);
        x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
        v[u] = _mm256_cvttps_epi32(x);
        acc = _mm256_add_epi32(acc, v[u]);
      }
      const __m256i b =
          _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c), _mm256_permutevar8x32_epi32(b, order));
    }
    // Then 8 at a time, the last 1-7 from a zero-padded copy, their lanes
    // past n masked to 0 (a zero row's w / ws may be NaN when ws underflowed).
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (; c < n4; c += 8) {
      const int left = n - c;
      __m256 x;
      if (left >= 8) {
        x = _mm256_loadu_ps(r + c);
      } else {
        alignas(32) float pad[8] = {};
        for (int u = 0; u < left; ++u) pad[u] = r[c + u];
        x = _mm256_load_ps(pad);
      }
      x = _mm256_div_ps(_mm256_mul_ps(x, sv), wv);
      x = _mm256_sub_ps(_mm256_add_ps(x, rnd), rnd);
      x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
      const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
      const __m256i v = _mm256_and_si256(_mm256_cvttps_epi32(x), keep);
      acc = _mm256_add_epi32(acc, v);
      const __m256i w16 = _mm256_packs_epi32(v, v);
      const __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16, w16), order);
      alignas(16) int8_t out[16];
      _mm_store_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(b));
      std::memcpy(q + c, out, static_cast<size_t>(std::min(8, n4 - c)));
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    int32_t sum = 0;
    for (int32_t v : lanes) sum += v;
    return sum;
  }

  // dequant_rows of a 3x3 conv, 8 kept inputs per step: each input's taps
  // 0-7 (8 adjacent bytes of the row) widened, converted and scaled (the
  // same single operations), the 8 x 8 block transposed so each tap's 8
  // inputs are stored together; tap 8 from the 8 ninth bytes.
  static size_t dequant9(const int8_t* row, const int32_t* in_index, size_t ic, float bs,
                         float* dst) {
    const __m256 sv = _mm256_set1_ps(bs);
    size_t i = 0;
    for (; i + 8 <= ic; i += 8) {
      __m256 v[8];
      alignas(32) int32_t last[8];
      if (i + 24 <= ic)  // the bytes two blocks ahead
        for (int b = 0; b < 8; b += 2)
          _mm_prefetch(
              reinterpret_cast<const char*>(row + static_cast<size_t>(in_index[i + 16 + b]) * 9),
              _MM_HINT_T0);
      for (int b = 0; b < 8; ++b) {
        const int8_t* src = row + static_cast<size_t>(in_index[i + b]) * 9;
        const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
        v[b] = _mm256_mul_ps(sv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8)));
        last[b] = src[8];
      }
      transpose8(v);
      for (int t = 0; t < 8; ++t) _mm256_storeu_ps(dst + static_cast<size_t>(t) * ic + i, v[t]);
      const __m256 l =
          _mm256_cvtepi32_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(last)));
      _mm256_storeu_ps(dst + 8 * ic + i, _mm256_mul_ps(sv, l));
    }
    return i;
  }
};

}  // namespace

#include "kernels/qops.inc"

void qconv(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
           const QEpilogue& ep, void* scratch, const Parallel* par) {
  qgemm::run<QIsa>(g, packed, in, out, ep, scratch, par);
}

const char* qconv_variant() {
  return "avx2";
}

}  // namespace spaedge::kernels::avx2
