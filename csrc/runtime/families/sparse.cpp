// Sparse-with-bitmask family (sparse.h): <conv>.sparse_delta_values/_mask,
// and sparse factors <conv>.lora_rank I32 [1] = r with, per factor, its
// stored entries: lora_a_values at the set bits of lora_a_mask (flat
// row-major positions of A [r, I']), lora_b_values/_mask of B [O', r].
// Factors are densified here, so applying the task is the dense path's: a
// rank component with no stored entry in A's row or in B's column adds
// nothing and is dropped; if the rest, dense, would be larger than its
// product (r' (O' + I') > O' I'), the product B A is added to the pointwise
// family instead. Either way a conv's factors take at most O' I' floats,
// whatever rank the file declares.
#include "runtime/families/sparse.h"

#include "runtime/task.h"

namespace spaedge::families::sparse {

namespace {

// The set positions, increasing, of `mask` over `limit` entries, checked
// against `values` (docs/format.md): bit i (byte i / 8, bit i % 8, least
// significant first) set iff flat row-major position i is stored; the mask
// is 1-D, ceil(limit / 8) bytes, with zero padding bits and one set bit per
// value (`shape` names the tensor in messages). limit <= 2^16 * 2^16 * 64^2
// (the graph's channel and kernel limits, or rank 2^16), so no size below
// overflows; nothing is allocated before the mask's length and bit count
// match the file's own sizes.
std::vector<int64_t> mask_positions(const Bundle& b, const TensorView& values,
                                    const TensorView& mask, uint64_t limit,
                                    const std::string& shape) {
  if (values.shape.size() != 1)
    b.fail_tensor(values.name, "shape " + values.shape_str() + ", expected [nnz]");
  const uint64_t bytes = limit / 8 + (limit % 8 != 0);
  if (mask.shape.size() != 1 || uint64_t(mask.shape[0]) != bytes)
    b.fail_tensor(mask.name, "shape " + mask.shape_str() + ", expected [" + std::to_string(bytes) +
                                 "] (one bit per entry of the " + shape + ", " +
                                 std::to_string(limit) + " entries, in bytes rounded up)");
  if (limit % 8 != 0 && (mask.u8(size_t(bytes - 1)) >> (limit % 8)) != 0)
    b.fail_tensor(mask.name, "padding bits after position " + std::to_string(limit - 1) +
                                 " are set (last byte " +
                                 std::to_string(mask.u8(size_t(bytes - 1))) +
                                 "): they must be zero");
  uint64_t set = 0;
  for (size_t j = 0; j < mask.numel; ++j) set += uint64_t(__builtin_popcount(mask.u8(j)));
  if (set != values.numel)
    b.fail_tensor(mask.name, "has " + std::to_string(set) + " set bits but '" + values.name +
                                 "' has " + std::to_string(values.numel) +
                                 " values (one value per set bit)");
  std::vector<int64_t> v;
  v.reserve(values.numel);
  for (size_t j = 0; j < mask.numel; ++j)
    for (unsigned bits = mask.u8(j); bits != 0; bits &= bits - 1)
      v.push_back(int64_t(j) * 8 + __builtin_ctz(bits));
  return v;
}

// The I32 position tensors that the bitmasks replaced: refused naming the
// tensor (before the missing mask would be reported).
void refuse_index_form(const Bundle& b, const std::string& L) {
  for (const char* k : {".sparse_delta", ".lora_a", ".lora_b"})
    if (b.find(L + k + "_index"))
      b.fail_tensor(L + k + "_index", "sparse positions are stored as U8 bitmasks ('" + L + k +
                                          "_mask'), no longer as I32 indices: repack the bundle "
                                          "with this spaedge");
}

void read_delta(Reader& r, const ConvSite& s, ConvTask& ct) {
  const std::string& L = s.node.name;
  const TensorView* sv = r.get(L + ".sparse_delta_values", DType::F32, false, "");
  const TensorView* sm = r.get(L + ".sparse_delta_mask", DType::U8, false, "");
  if (sv && !sm)
    r.b.fail("missing tensor '" + L + ".sparse_delta_mask' (present iff '" + L +
             ".sparse_delta_values' is)");
  if (sm && !sv)
    r.b.fail("missing tensor '" + L + ".sparse_delta_values' (present iff '" + L +
             ".sparse_delta_mask' is)");
  if (!sv) return;
  if (!ct.sparse) ct.sparse.emplace();
  ct.sparse->index =
      mask_positions(r.b, *sv, *sm, uint64_t(s.O * s.I * s.k * s.k),
                     "[" + std::to_string(s.O) + ", " + std::to_string(s.I) + ", " +
                         std::to_string(s.k) + ", " + std::to_string(s.k) + "] task weight");
  ct.sparse->values = r.floats(*sv);
}

void read_factors(Reader& r, const ConvSite& s, ConvTask& ct) {
  const std::string& L = s.node.name;
  const int64_t O = s.O, I = s.I;
  const TensorView* rk = r.get(L + ".lora_rank", DType::I32, false, "");
  const TensorView* av = r.get(L + ".lora_a_values", DType::F32, false, "");
  const TensorView* ai = r.get(L + ".lora_a_mask", DType::U8, false, "");
  const TensorView* bv = r.get(L + ".lora_b_values", DType::F32, false, "");
  const TensorView* bi = r.get(L + ".lora_b_mask", DType::U8, false, "");
  if (!rk && !av && !ai && !bv && !bi) return;
  const char* pair[4][2] = {{".lora_a_values", ".lora_a_mask"},
                            {".lora_a_mask", ".lora_a_values"},
                            {".lora_b_values", ".lora_b_mask"},
                            {".lora_b_mask", ".lora_b_values"}};
  const TensorView* have[4] = {av, ai, bv, bi};
  const TensorView* partner[4] = {ai, av, bi, bv};
  for (int k = 0; k < 4; ++k)
    if (have[k] && !partner[k])
      r.b.fail("missing tensor '" + L + pair[k][1] + "' (present iff '" + L + pair[k][0] + "' is)");
  const std::string together =
      "(sparse factors: lora_rank, lora_a_values/_mask and lora_b_values/_mask "
      "come together)";
  if (!av) r.b.fail("missing tensor '" + L + ".lora_a_values' " + together);
  if (!bv) r.b.fail("missing tensor '" + L + ".lora_b_values' " + together);
  if (!rk) r.b.fail("missing tensor '" + L + ".lora_rank' " + together);
  if (ct.lowrank)
    r.b.fail_tensor(av->name, "conv '" + L +
                                  "' also has dense lora_a/lora_b: its factors are dense or "
                                  "sparse, not both");
  r.expect_shape(*rk, {1}, "(the rank of the sparse factors)");
  const int64_t rank = rk->i32(0);
  if (rank < 1 || rank > kMaxRank)
    r.b.fail_tensor(rk->name, "rank " + std::to_string(rank) + " must be in [1, " +
                                  std::to_string(kMaxRank) + "]");
  const std::string dims = "[" + std::to_string(rank) + ", " + std::to_string(I) + "] factor A";
  const std::vector<int64_t> a_at = mask_positions(r.b, *av, *ai, uint64_t(rank * I), dims);
  const std::vector<int64_t> b_at =
      mask_positions(r.b, *bv, *bi, uint64_t(O * rank),
                     "[" + std::to_string(O) + ", " + std::to_string(rank) + "] factor B");
  const std::vector<float> a = r.floats(*av), b = r.floats(*bv);
  if (!ct.sparse) ct.sparse.emplace();
  ct.sparse->factors = true;

  // Rank components stored in both factors, renumbered.
  std::vector<char> in_a(size_t(rank), 0), in_b(size_t(rank), 0);
  for (int64_t x : a_at) in_a[size_t(x / I)] = 1;
  for (int64_t x : b_at) in_b[size_t(x % rank)] = 1;
  std::vector<int64_t> comp(size_t(rank), -1);
  int64_t re = 0;
  for (size_t j = 0; j < size_t(rank); ++j)
    if (in_a[j] && in_b[j]) comp[j] = re++;
  if (re == 0) return;  // no stored entry reaches the product
  if (re * (O + I) <= O * I) {
    std::vector<float> da(size_t(re * I), 0.0f), db(size_t(O * re), 0.0f);
    for (size_t k = 0; k < a_at.size(); ++k) {
      const int64_t j = comp[size_t(a_at[k] / I)];
      if (j >= 0) da[size_t(j * I + a_at[k] % I)] = a[k];
    }
    for (size_t k = 0; k < b_at.size(); ++k) {
      const int64_t j = comp[size_t(b_at[k] % rank)];
      if (j >= 0) db[size_t(b_at[k] / rank * re + j)] = b[k];
    }
    ct.lowrank = lowrank::make(int(re), int(O), std::move(da), std::move(db));
    return;
  }
  // The product, row by row of B: A's entries of row j are a_at[row[j], row[j + 1]).
  std::vector<size_t> row(size_t(rank) + 1, 0);
  for (int64_t x : a_at) ++row[size_t(x / I) + 1];
  for (size_t j = 0; j < size_t(rank); ++j) row[j + 1] += row[j];
  if (!ct.pointwise) ct.pointwise = pointwise::State{std::vector<float>(size_t(O * I), 0.0f)};
  for (size_t k = 0; k < b_at.size(); ++k) {
    const size_t o = size_t(b_at[k] / rank), j = size_t(b_at[k] % rank);
    if (comp[j] < 0) continue;
    float* dst = ct.pointwise->delta.data() + o * size_t(I);
    for (size_t e = row[j]; e < row[j + 1]; ++e) dst[size_t(a_at[e] % I)] += b[k] * a[e];
  }
}

}  // namespace

void read_conv(Reader& r, const ConvSite& site, ConvTask& ct) {
  refuse_index_form(r.b, site.node.name);
  read_delta(r, site, ct);
  read_factors(r, site, ct);
}

void read_model(Reader&, std::vector<ConvTask>&) {}

bool general(const State& s) {
  return !s.index.empty();
}

void apply(const State& s, const ConvTask& ct, const ApplyStep&, float* w) {
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel), Ip = size_t(ct.in_c);
  for (size_t j = 0; j < s.index.size(); ++j) {
    const size_t f = size_t(s.index[j]);  // flat OIHW over [O', I', k, k]
    const size_t o = f / (Ip * kk), i = (f / kk) % Ip, t = f % kk;
    w[(o * kk + t) * Ip + i] += s.values[j];
  }
}

}  // namespace spaedge::families::sparse
