// AVX-512 VNNI int8 convolution (qgemm.h): vpdpbusd multiplies the u8
// activations by the s8 weights four K rows at a time and adds the four
// products to an int32 lane, exactly (no intermediate saturation). One zmm
// is one panel row group: 16 channels x 4 K rows, as packed. A tile is 8
// rows x 32 channels (two adjacent panels; a lone last panel 8 x 16): 16
// accumulators, 8 activation broadcasts and 2 weight loads per 16 vpdpbusd.
// Requantization is QEpilogue's formula in 16 float lanes, ragged channels
// masked. Compiled with -mavx512bw -mavx512vl -mavx512vnni (CMakeLists.txt)
// and run only when cpuid reports them (table.cpp chooses, else avx2's).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/qgemm.h"

namespace spaedge::kernels::avx512 {

namespace {

using qgemm::QTile;

inline void requant16(__m512i acc, const QTile<uint8_t>& t, int r, int off, int n) {
  const QEpilogue& ep = *t.ep;
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1u);
  const __m512i corr =
      _mm512_mullo_epi32(_mm512_loadu_si512(t.wsum + off), _mm512_set1_epi32(t.zp));
  const __m512 mul = _mm512_maskz_loadu_ps(m, t.mul + off);
  const __m512 add = t.add ? _mm512_maskz_loadu_ps(m, t.add + off) : _mm512_setzero_ps();
  __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, corr)), mul, add);
  if (t.res) {
    const __m512i ri = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, t.res + r * t.ldc + off));
    const __m512 rf = _mm512_cvtepi32_ps(_mm512_sub_epi32(ri, _mm512_set1_epi32(ep.res_zp)));
    f = _mm512_fmadd_ps(rf, _mm512_set1_ps(ep.res_mul), f);
  }
  const float lo = ep.relu ? 0.0f : static_cast<float>(-ep.out_zp);
  f = _mm512_min_ps(_mm512_max_ps(f, _mm512_set1_ps(lo)),
                    _mm512_set1_ps(static_cast<float>(255 - ep.out_zp)));
  const __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(f), _mm512_set1_epi32(ep.out_zp));
  _mm_mask_storeu_epi8(t.c + r * t.ldc + off, m, _mm512_cvtepi32_epi8(q));
}

struct QIsa {
  using Elem = uint8_t;
  static Elem load(uint8_t q) { return q; }
  static int zp_corr(int in_zp) { return in_zp; }
  static constexpr int MR = 8, NT = 2 * qgemm::kNR;

  template <int R, bool TWO>
  static void micro(const QTile<Elem>& t) {
    __m512i c0[R], c1[R];
    for (int r = 0; r < R; ++r) c0[r] = c1[r] = _mm512_setzero_si512();
    const int8_t* b0 = t.b;
    const int8_t* b1 = t.b + (TWO ? t.pstride : 0);
    for (int s = 0; s < t.nseg; ++s) {
      const uint8_t* p[R];
      for (int r = 0; r < R; ++r) p[r] = t.a[r] + s * t.jump;
      for (int gi = 0; gi < t.groups; ++gi) {
        const __m512i w0 = _mm512_loadu_si512(b0);
        const __m512i w1 = TWO ? _mm512_loadu_si512(b1) : w0;
        b0 += 64;
        b1 += 64;
        for (int r = 0; r < R; ++r) {
          int32_t v;
          std::memcpy(&v, p[r] + gi * qgemm::kGroup, sizeof v);
          const __m512i x = _mm512_set1_epi32(v);
          c0[r] = _mm512_dpbusd_epi32(c0[r], x, w0);
          if (TWO) c1[r] = _mm512_dpbusd_epi32(c1[r], x, w1);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      requant16(c0[r], t, r, 0, TWO ? qgemm::kNR : t.nr);
      if (TWO) requant16(c1[r], t, r, qgemm::kNR, t.nr - qgemm::kNR);
    }
  }

  template <bool TWO>
  static void rows(int n, const QTile<Elem>& t) {
    switch (n) {
      case 8:
        micro<8, TWO>(t);
        break;
      case 7:
        micro<7, TWO>(t);
        break;
      case 6:
        micro<6, TWO>(t);
        break;
      case 5:
        micro<5, TWO>(t);
        break;
      case 4:
        micro<4, TWO>(t);
        break;
      case 3:
        micro<3, TWO>(t);
        break;
      case 2:
        micro<2, TWO>(t);
        break;
      default:
        micro<1, TWO>(t);
        break;
    }
  }

  static void tile(int n, const QTile<Elem>& t) {
    if (t.nr > qgemm::kNR)
      rows<true>(n, t);
    else
      rows<false>(n, t);
  }
};

}  // namespace

// The VNNI conv (table.cpp's qconv runs it when the CPU has VNNI).
void qconv_vnni(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
                const QEpilogue& ep, void* scratch, const Parallel* par) {
  qgemm::run<QIsa>(g, packed, in, out, ep, scratch, par);
}

}  // namespace spaedge::kernels::avx512
