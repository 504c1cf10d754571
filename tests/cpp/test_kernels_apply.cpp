// The task application kernels of every table against the scalar reference:
// lowrank_merge, conv_apply (one-pass gather, merge, scale
// and pack), splopa_expand.
#include "kernel_check.h"

namespace {

// ------------------------------------------------------ lowrank_merge -------

void test_lowrank_merge(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int out_c, in_c, kk, rank;
  };
  const std::vector<P> cases = {{1, 1, 1, 1},      {5, 3, 1, 1},    {64, 64, 3, 8},
                                {17, 33, 3, 4},    {100, 17, 7, 3}, {3, 5, 1, 0},
                                {512, 256, 3, 16}, {33, 100, 3, 5}, {10, 1000, 1, 8}};
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 400;
  for (const P& p : cases) {
    Rng rng(seed++);
    const size_t wn = static_cast<size_t>(p.out_c) * p.kk * p.kk * p.in_c;
    std::vector<float> w = random_vec(wn, rng);
    std::vector<float> a = random_vec(static_cast<size_t>(p.rank) * p.in_c + 1, rng);
    std::vector<float> bm = random_vec(static_cast<size_t>(p.out_c) * p.rank + 1, rng);
    std::vector<float> want = w;
    ref.lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), want.data());
    for (const k::KernelTable* t : tables) {
      char b[128];
      std::snprintf(b, sizeof b, "lowrank_merge[%s] out=%d in=%d k%d rank=%d", t->isa, p.out_c,
                    p.in_c, p.kk, p.rank);
      Guarded got(wn);
      std::memcpy(got.data(), w.data(), wn * sizeof(float));
      t->lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), got.data());
      check_output(b, got, want.data(), "the weights");
    }
  }
}

// ------------------------------------------------------ conv_apply ----------

// Whether a kernel given buf.data() + lead for n floats wrote only there:
// the canaries, and the NaN the buffer was filled with before and after the
// n floats, are intact.
bool wrote_only(const Guarded& buf, size_t lead, size_t n) {
  bool inside = buf.guards_intact();
  for (size_t j = 0; j < lead; ++j) inside = inside && std::isnan(buf.data()[j]);
  for (size_t j = lead + n; j < buf.n; ++j) inside = inside && std::isnan(buf.data()[j]);
  return inside;
}

// conv_apply (task application in one pass, from the OIHW base) against what
// it replaces: gather into OHWI, the same table's lowrank_merge, BN scale,
// then conv_pack / conv_lowrank_pack. Ragged panels, (non-)contiguous kept
// outputs, centre taps of k = 1..7, ranks 0..17, both modes, and the kept
// outputs cut into ranges of 16 and 32 applied out of order (as the
// runtime's threads do), bit for bit equal to one call over all of them. The
// packed buffer starts as NaN so every padding lane must be written.
void test_conv_apply(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int base_out, base_in, out_c, in_c, kk, rank;
    bool scale, fused, contiguous;
  };
  const std::vector<P> cases = {
      {1, 1, 1, 1, 1, 0, false, false, false},       {16, 3, 16, 3, 3, 0, true, false, true},
      {40, 9, 17, 5, 3, 4, true, false, false},      {40, 9, 17, 5, 3, 4, true, true, false},
      {64, 64, 33, 20, 3, 8, true, false, false},    {64, 64, 33, 20, 3, 8, true, true, false},
      {64, 64, 64, 64, 3, 8, true, false, true},     {100, 7, 15, 7, 7, 3, false, false, false},
      {100, 7, 15, 7, 7, 3, true, true, false},      {512, 256, 154, 77, 3, 8, true, false, false},
      {512, 256, 154, 77, 1, 17, true, true, false}, {48, 48, 32, 1, 5, 2, true, false, true},
      {24, 30, 9, 30, 1, 1, true, false, false},     {3, 5, 2, 4, 3, 0, true, true, false},
  };
  uint64_t seed = 500;
  for (const P& p : cases) {
    Rng rng(seed++);
    const int kk = p.kk * p.kk;
    // Kept indices: strictly increasing, contiguous or spread out.
    auto pick = [&rng](int base, int kept, bool contiguous) {
      std::vector<int32_t> idx;
      if (contiguous) {
        const int start = static_cast<int>(rng.next() % static_cast<uint32_t>(base - kept + 1));
        for (int i = 0; i < kept; ++i) idx.push_back(start + i);
        return idx;
      }
      int left = kept;
      for (int i = 0; i < base && left > 0; ++i) {
        const int remaining = base - i;
        if (static_cast<int>(rng.next() % static_cast<uint32_t>(remaining)) < left) {
          idx.push_back(i);
          --left;
        }
      }
      return idx;
    };
    const std::vector<int32_t> oi = pick(p.base_out, p.out_c, p.contiguous);
    const std::vector<int32_t> ii = pick(p.base_in, p.in_c, false);
    const std::vector<float> oihw =
        random_vec(static_cast<size_t>(p.base_out) * p.base_in * kk, rng);
    const std::vector<float> a = random_vec(static_cast<size_t>(p.rank) * p.in_c, rng);
    const std::vector<float> bm = random_vec(static_cast<size_t>(p.out_c) * p.rank, rng);
    std::vector<float> bt(bm.size());
    for (int o = 0; o < p.out_c; ++o)
      for (int r = 0; r < p.rank; ++r)
        bt[static_cast<size_t>(r) * p.out_c + o] = bm[static_cast<size_t>(o) * p.rank + r];
    std::vector<float> scale = random_vec(static_cast<size_t>(p.out_c), rng);
    k::ConvGeometry g = geom(9, 9, p.in_c, p.out_c, p.kk, 1, p.kk / 2);
    const int K = kk * p.in_c;
    // Gathered OHWI weights (exact copies of base values).
    std::vector<float> w(static_cast<size_t>(p.out_c) * K);
    for (int o = 0; o < p.out_c; ++o)
      for (int t = 0; t < kk; ++t)
        for (int i = 0; i < p.in_c; ++i)
          w[(static_cast<size_t>(o) * kk + t) * p.in_c + i] =
              oihw[(static_cast<size_t>(oi[o]) * p.base_in + ii[i]) * kk + t];
    for (const k::KernelTable* t : tables) {
      char b[192];
      std::snprintf(b, sizeof b, "conv_apply[%s] base %dx%d kept out=%d in=%d k%d rank=%d%s%s%s",
                    t->isa, p.base_out, p.base_in, p.out_c, p.in_c, p.kk, p.rank,
                    p.scale ? " scale" : "", p.fused ? " fused" : "",
                    p.contiguous ? " contiguous" : "");
      // What the multi-pass path produces with this table.
      std::vector<float> ww = w;
      if (p.rank > 0 && !p.fused)
        t->lowrank_merge(p.out_c, p.in_c, p.kk, p.rank, a.data(), bm.data(), ww.data());
      std::vector<float> bs = bm;
      if (p.scale) {
        for (int o = 0; o < p.out_c; ++o) {
          for (int j = 0; j < K; ++j)
            ww[static_cast<size_t>(o) * K + j] *= scale[static_cast<size_t>(o)];
          for (int r = 0; r < p.rank; ++r)
            bs[static_cast<size_t>(o) * p.rank + r] *= scale[static_cast<size_t>(o)];
        }
      }
      const bool fused = p.fused && p.rank > 0;
      const size_t n = fused ? t->conv_lowrank_packed_floats(g, p.rank) : t->conv_packed_floats(g);
      std::vector<float> want(n, 0.0f);
      if (fused)
        t->conv_lowrank_pack(g, p.rank, ww.data(), a.data(), bs.data(), want.data());
      else
        t->conv_pack(g, ww.data(), want.data());

      k::ApplyArgs args;
      args.g = g;
      args.base = oihw.data();
      args.base_in = p.base_in;
      args.base_out = p.base_out;
      args.out_index = oi.data();
      args.in_index = ii.data();
      args.rank = p.rank;
      args.a = a.data();
      args.bt = bt.data();
      args.fused = fused;
      args.scale = p.scale ? scale.data() : nullptr;
      const bool merged = p.rank > 0 && !fused;
      // 64-byte aligned output (AVX2 streams its stores there) and misaligned.
      for (int misalign : {0, 1}) {
        const float nan = std::numeric_limits<float>::quiet_NaN();
        std::vector<float> whole;  // one call over every kept output
        for (int step : {p.out_c, 16, 32}) {
          Guarded buf(n + 32, nan);
          const size_t lead =
              (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64 / sizeof(float) +
              size_t(misalign);
          float* out = buf.data() + lead;
          std::vector<int> starts;
          for (int o0 = 0; o0 < p.out_c; o0 += step) starts.push_back(o0);
          for (size_t j = starts.size(); j-- > 0;)  // last range first
            t->conv_apply(args, starts[j], std::min(p.out_c, starts[j] + step), out);
          const std::string what = std::string(b) + (misalign ? " misaligned" : " aligned") +
                                   " outputs/range=" + std::to_string(step);
          if (!wrote_only(buf, lead, n)) {
            report(false, what + ": wrote outside the packed weights");
            continue;
          }
          const Compare c = compare(want.data(), out, n);
          // Bit for bit where no merge rounding is involved, else within tolerance;
          // any cut into ranges gives the bits of one call.
          bool exact = true, same = true;
          if (whole.empty()) whole.assign(out, out + n);
          for (size_t j = 0; j < n; ++j) {
            if (std::memcmp(&want[j], out + j, sizeof(float)) != 0) exact = false;
            if (std::memcmp(&whole[j], out + j, sizeof(float)) != 0) same = false;
          }
          report(same && (merged ? within(c) : exact && within(c)), what, &c);
        }
      }
    }
  }
}

// ------------------------------------------------------ splopa_expand -------

// splopa_expand (SPLoPA's Kronecker sum added into rows of dst) of every table
// against scalar, and scalar against the definition computed in double
// (sum_p kron(C_p, U_p V_p)). Blocks of 1, 2, 3, 4 (the toolchain's), 5, 8,
// 12 and 16 inputs, square and not; ragged row lengths (tails of every ISA's
// vector), 1 to 9 prototypes (groups of four and remainders), ranks 1 to 5;
// rows with a stride (the runtime passes the centre tap of an OHWI
// workspace): the floats between rows must keep their values, and nothing
// outside the buffer is written. Same tolerance as every kernel.
void test_splopa_expand(const std::vector<const k::KernelTable*>& tables) {
  struct P {
    int out_c, in_c, n, rank, bo, bi, gap;  // gap: floats between rows (ld = in_c + gap)
  };
  const std::vector<P> cases = {
      {4, 4, 1, 1, 4, 4, 0},     {16, 16, 4, 2, 4, 4, 0},      {8, 12, 3, 2, 4, 4, 5},
      {128, 128, 4, 4, 4, 4, 0}, {72, 68, 4, 2, 4, 4, 8 * 68}, {20, 36, 5, 3, 4, 4, 1},
      {12, 28, 9, 4, 4, 4, 3},   {6, 10, 2, 1, 2, 2, 0},       {5, 7, 3, 1, 1, 1, 2},
      {16, 24, 4, 5, 8, 8, 0},   {16, 40, 6, 2, 4, 8, 1},      {9, 18, 2, 2, 3, 3, 4},
      {10, 25, 4, 2, 2, 5, 0},   {24, 36, 3, 3, 12, 12, 2},    {32, 48, 4, 4, 16, 16, 0},
      {8, 32, 2, 2, 4, 16, 7},   {64, 4, 4, 1, 4, 4, 0},       {4, 64, 7, 2, 4, 4, 0},
      {3, 6, 1, 1, 3, 2, 1},     {12, 6, 4, 3, 4, 1, 2},
  };
  const k::KernelTable& ref = k::scalar::table();
  uint64_t seed = 900;
  for (const P& p : cases) {
    Rng rng(seed++);
    const size_t ld = static_cast<size_t>(p.in_c + p.gap);
    const size_t total = static_cast<size_t>(p.out_c) * ld;
    const int ob = p.out_c / p.bo, ib = p.in_c / p.bi;
    const std::vector<float> u = random_vec(static_cast<size_t>(p.n) * p.bo * p.rank, rng);
    const std::vector<float> v = random_vec(static_cast<size_t>(p.n) * p.rank * p.bi, rng);
    const std::vector<float> coef = random_vec(static_cast<size_t>(p.n) * ob * ib, rng);
    const std::vector<float> start = random_vec(total, rng);
    k::SplopaArgs args;
    args.out_c = p.out_c;
    args.in_c = p.in_c;
    args.n = p.n;
    args.rank = p.rank;
    args.bo = p.bo;
    args.bi = p.bi;
    args.u = u.data();
    args.v = v.data();
    args.coef = coef.data();
    char b[160];
    std::snprintf(b, sizeof b, "splopa_expand out=%d in=%d n=%d rank=%d block %dx%d ld=%zu",
                  p.out_c, p.in_c, p.n, p.rank, p.bo, p.bi, ld);
    // The definition, in double: start + sum_p kron(C_p, U_p V_p) on the rows, the gaps as they
    // were.
    std::vector<float> def = start;
    for (int o = 0; o < p.out_c; ++o)
      for (int i = 0; i < p.in_c; ++i) {
        double acc = 0.0;
        for (int q = 0; q < p.n; ++q) {
          double pv = 0.0;
          for (int r = 0; r < p.rank; ++r)
            pv += double(u[(static_cast<size_t>(q) * p.bo + o % p.bo) * p.rank + r]) *
                  double(v[(static_cast<size_t>(q) * p.rank + r) * p.bi + i % p.bi]);
          acc += double(coef[(static_cast<size_t>(q) * ob + o / p.bo) * ib + i / p.bi]) * pv;
        }
        def[static_cast<size_t>(o) * ld + i] =
            float(double(start[static_cast<size_t>(o) * ld + i]) + acc);
      }
    std::vector<float> want = start;
    ref.splopa_expand(args, want.data(), ld);
    const Compare rc = compare(def.data(), want.data(), total);
    report(within(rc), std::string(b) + " [scalar against the definition]", &rc);
    for (const k::KernelTable* t : tables) {
      Guarded got(total);
      std::memcpy(got.data(), start.data(), total * sizeof(float));
      t->splopa_expand(args, got.data(), ld);
      const std::string what = std::string(b) + " [" + t->isa + "]";
      bool gaps = true;
      for (int o = 0; o < p.out_c; ++o)
        for (size_t j = static_cast<size_t>(p.in_c); j < ld; ++j) {
          const size_t at = static_cast<size_t>(o) * ld + j;
          if (std::memcmp(&got.data()[at], &start[at], sizeof(float)) != 0) gaps = false;
        }
      if (!gaps) {
        report(false, what + ": wrote between the rows");
        continue;
      }
      check_output(what, got, want.data(), "the rows");
    }
  }
}

}  // namespace

int main() {
  const std::vector<const k::KernelTable*> tables = tested_tables();
  test_lowrank_merge(tables);
  test_conv_apply(tables);
  test_splopa_expand(tables);
  return tcheck::summary("test_kernels_apply");
}
