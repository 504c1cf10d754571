// The scalar int8 kernels on cases read from a file, for
// tests/pack/test_quantize.py: the NumPy int8 reference
// (spaedge.pack.quantize) must equal them bit for bit. Built by the test
// with the checkout's csrc/kernels/scalar/qconv.cpp.
//
// Input: int32 case count, then per case int32 in_h in_w in_c out_c kernel
// stride pad in_zp out_zp has_residual res_zp relu; s8 OHWI weights; u8
// NHWC input; float mul[out_c], add[out_c], res_mul; u8 residual (if any);
// int32 n, float x[n], float scale, int32 zp (quantize); float gap scale.
// Output per case: the qconv output, the quantized x, qmaxpool 3/2/1 of
// the output (when it is at least 2x2) and qglobal_avgpool of the output.
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {
#define SPAEDGE_KERNEL(name, ret, params) fn::name name;
#include "kernels/kernels.inc"
#undef SPAEDGE_KERNEL
}  // namespace spaedge::kernels::scalar

namespace k = spaedge::kernels;

namespace {
template <class T>
std::vector<T> get(FILE* f, size_t n) {
  std::vector<T> v(n);
  if (n && std::fread(v.data(), sizeof(T), n, f) != n) throw std::runtime_error("short input");
  return v;
}
template <class T>
void put(FILE* f, const std::vector<T>& v) {
  if (!v.empty()) std::fwrite(v.data(), sizeof(T), v.size(), f);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* f = std::fopen(argv[1], "rb");
  FILE* o = std::fopen(argv[2], "wb");
  if (!f || !o) return 2;
  const int cases = get<int32_t>(f, 1)[0];
  for (int c = 0; c < cases; ++c) {
    const auto h = get<int32_t>(f, 12);
    k::ConvGeometry g;
    g.in_h = h[0];
    g.in_w = h[1];
    g.in_c = h[2];
    g.out_c = h[3];
    g.kernel = h[4];
    g.stride = h[5];
    g.pad = h[6];
    const auto w = get<int8_t>(f, size_t(g.out_c) * g.kernel * g.kernel * g.in_c);
    const auto in = get<uint8_t>(f, size_t(g.in_h) * g.in_w * g.in_c);
    const auto mul = get<float>(f, size_t(g.out_c));
    const auto add = get<float>(f, size_t(g.out_c));
    const float res_mul = get<float>(f, 1)[0];
    const int oh = g.out_h(), ow = g.out_w();
    const size_t n_out = size_t(oh) * ow * g.out_c;
    const auto res = h[9] ? get<uint8_t>(f, n_out) : std::vector<uint8_t>();
    k::QEpilogue ep;
    ep.in_zp = h[7];
    ep.out_zp = h[8];
    ep.mul = mul.data();
    ep.add = add.data();
    ep.residual = h[9] ? res.data() : nullptr;
    ep.res_zp = h[10];
    ep.res_mul = res_mul;
    ep.relu = h[11] != 0;
    std::vector<uint8_t> packed(k::scalar::qconv_packed_bytes(g));
    std::vector<uint8_t> scratch(k::scalar::qconv_scratch_bytes(g, 1));
    k::scalar::qconv_pack(g, w.data(), packed.data());
    std::vector<uint8_t> out(n_out);
    k::scalar::qconv(g, packed.data(), in.data(), out.data(), ep, scratch.data(), nullptr);
    put(o, out);
    const int n = get<int32_t>(f, 1)[0];
    const auto x = get<float>(f, size_t(n));
    const float qs = get<float>(f, 1)[0];
    const int qz = get<int32_t>(f, 1)[0];
    std::vector<uint8_t> q(static_cast<size_t>(n));
    k::scalar::quantize(size_t(n), x.data(), qs, qz, q.data());
    put(o, q);
    if (oh >= 2 && ow >= 2) {
      std::vector<uint8_t> mp(size_t((oh - 1) / 2 + 1) * ((ow - 1) / 2 + 1) * g.out_c);
      k::scalar::qmaxpool(oh, ow, g.out_c, 3, 2, 1, out.data(), mp.data(), nullptr);
      put(o, mp);
    }
    const float gs = get<float>(f, 1)[0];
    std::vector<float> gp(static_cast<size_t>(g.out_c));
    k::scalar::qglobal_avgpool(oh, ow, g.out_c, out.data(), gs, ep.out_zp, gp.data());
    put(o, gp);
  }
  return std::fclose(o) == 0 ? 0 : 1;
}
