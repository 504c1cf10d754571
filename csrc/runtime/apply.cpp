// Task application: gather + low-rank merge + delta + BN fold + pack
// (apply.h).
#include "runtime/apply.h"

#include <algorithm>
#include <cmath>

namespace spaedge {

void size_scratch(Applied& a, int threads) {
  size_t need = 0;
  if (a.int8) {
    for (const Step& s : a.task->exec_plan.steps)
      if (s.kind == StepKind::Conv)
        need = std::max(need, a.kt->qconv_scratch_bytes(s.geom, threads));
    a.scratch.resize((need + sizeof(float) - 1) / sizeof(float));
    a.scratch_threads = threads;
    return;
  }
  for (const Step& s : a.task->exec_plan.steps) {
    if (s.kind != StepKind::Conv) continue;
    const int r = a.fused_rank[size_t(s.index)];
    need = std::max(need, r > 0 ? a.kt->conv_lowrank_scratch_floats(s.geom, r, threads)
                                : a.kt->conv_scratch_floats(s.geom, threads));
  }
  a.scratch.resize(need);
  a.scratch_threads = threads;
}

namespace {

// The general path for convs whose task carries a full/pointwise/sparse weight
// delta: gather W[out_index][:, in_index] from the base's OIHW weights into an
// OHWI workspace, merge, add the deltas, scale, pack.
void apply_general(const Graph& g, const ConvTask& ct, const kernels::KernelTable& kt, int fused,
                   float* w, float* bs, float* dst) {
  const Node& n = g.nodes[size_t(ct.node)];
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel);
  const size_t I = size_t(n.in_channels);
  const size_t Ip = size_t(ct.in_c);
  // Sequential writes; the reads stay within one base row (I*k*k floats).
  for (size_t o = 0; o < size_t(ct.out_c); ++o) {
    const float* row = n.weight_f32 + size_t(ct.out_index[o]) * I * kk;
    float* d = w + o * kk * Ip;
    for (size_t t = 0; t < kk; ++t) {
      float* dt = d + t * Ip;
      for (size_t i = 0; i < Ip; ++i) dt[i] = row[size_t(ct.in_index[i]) * kk + t];
    }
  }
  // Each family's update, in list order (families.inc).
  families::apply(ct, {kt, fused}, w);
  if (!ct.scale.empty()) {
    for (size_t o = 0; o < size_t(ct.out_c); ++o) {
      const float s = ct.scale[o];
      float* r = w + o * kk * Ip;
      for (size_t j = 0; j < kk * Ip; ++j) r[j] *= s;
    }
  }
  if (fused > 0) {
    // BN scales output channel o of the whole sum: scale B' rows too.
    const families::lowrank::State& lr = *ct.lowrank;
    const float* b = lr.b.data();
    if (!ct.scale.empty()) {
      for (size_t o = 0; o < size_t(ct.out_c); ++o)
        for (size_t r = 0; r < size_t(fused); ++r)
          bs[o * size_t(fused) + r] = lr.b[o * size_t(fused) + r] * ct.scale[o];
      b = bs;
    }
    kt.conv_lowrank_pack(ct.geom, fused, w, lr.a.data(), b, dst);
  } else {
    kt.conv_pack(ct.geom, w, dst);
  }
}

// Packed floats per work item of the one-pass path: about kItemFloats
// floats written per item, in whole 16-output blocks.
constexpr size_t kItemFloats = size_t(48) << 10;

// Arguments of the one-pass application of `ct`, reading the base's OIHW weights.
kernels::ApplyArgs one_pass_args(const Node& n, const ConvTask& ct, int fused) {
  kernels::ApplyArgs args;
  args.g = ct.geom;
  args.base = n.weight_f32;
  args.base_in = n.in_channels;
  args.base_out = n.out_channels;
  args.out_index = ct.out_index.data();
  args.in_index = ct.in_index.data();
  args.rank = ct.rank();
  args.a = ct.lowrank ? ct.lowrank->a.data() : nullptr;
  args.bt = ct.lowrank ? ct.lowrank->bt.data() : nullptr;
  args.fused = fused > 0;
  args.scale = ct.scale.empty() ? nullptr : ct.scale.data();
  return args;
}

// ---- int8 (docs/int8.md, (c)) ----------------------------------------------

size_t round64(size_t n) {
  return (n + 63) / 64 * 64;
}

// How one conv of an int8 task is applied: its s8 values kept (no update),
// dequantized + merged + requantized by output ranges (its only update is
// low-rank), or as a whole through the families' general code.
enum class Int8Way { Keep, LowRank, General };

Int8Way int8_way(const ConvTask& ct) {
  int families = 0;
#define SPAEDGE_FAMILY(id, ...) families += ct.id ? 1 : 0;
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
  if (families == 0) return Int8Way::Keep;
  return families == 1 && ct.lowrank ? Int8Way::LowRank : Int8Way::General;
}

// The int8 base rows of `ct` as the int8 application kernels read them.
kernels::QApplyArgs int8_args(const Node& n, const ConvTask& ct) {
  kernels::QApplyArgs args;
  args.g = ct.geom;
  args.base = n.weight_s8;
  args.base_scale = n.weight_scale.data();
  args.base_in = n.in_channels;
  args.base_out = n.out_channels;
  args.out_index = ct.out_index.data();
  args.in_index = ct.in_index.data();
  args.scale = ct.scale.empty() ? nullptr : ct.scale.data();
  return args;
}

// s8 elements per work item of an int8 conv split into output ranges:
// about this many, in whole 16-output panels (the float rows of a range
// stay in L2 between the dequantization, the merge and the requantization).
constexpr size_t kInt8ItemElems = size_t(48) << 10;

// Kept outputs [o0, o1) of one int8 conv (docs/int8.md (c)): packed panels,
// weight sums and per-channel weight scales (into `mul`, then turned into
// the requantization multipliers). `w`: the worker's float rows.
void apply_int8_item(const Graph& g, const Task& task, const ConvTask& ct, const Step& st,
                     const kernels::KernelTable& kt, int o0, int o1, float* w, float* mul,
                     float* add, unsigned char* dst) {
  const kernels::QApplyArgs args = int8_args(g.nodes[size_t(ct.node)], ct);
  switch (int8_way(ct)) {
    case Int8Way::Keep:
      kt.qconv_gather_pack(args, o0, o1, mul, dst);
      break;
    case Int8Way::LowRank: {
      // The merge is row by row on every ISA: a range's rows get the bits of
      // the whole conv's merge (tests/cpp/test_kernels_int8.cpp).
      const families::lowrank::State& lr = *ct.lowrank;
      kt.qconv_dequant_gather(args, o0, o1, w);
      kt.lowrank_merge(o1 - o0, ct.in_c, ct.kernel, lr.rank, lr.a.data(),
                       lr.b.data() + size_t(o0) * size_t(lr.rank), w);
      kt.qconv_requant_pack(ct.geom, w, args.scale, o0, o1, mul, dst);
      break;
    }
    case Int8Way::General:  // the whole conv: families::apply works on all rows
      kt.qconv_dequant_gather(args, 0, ct.out_c, w);
      families::apply(ct, {kt, 0}, w);  // every update merged, as the fp32 general path
      kt.qconv_requant_pack(ct.geom, w, args.scale, 0, ct.out_c, mul, dst);
      break;
  }
  const float s_in = task.act_scale[size_t(st.in)];
  const float s_out = task.act_scale[size_t(st.out)];
  for (int o = o0; o < o1; ++o) {
    const float sw = s_in * mul[o];
    mul[o] = sw / s_out;
    add[o] = ct.bias[size_t(o)] / s_out;
  }
}

void apply_int8(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, Workers& pool, Applied& a) {
  const Graph& g = base.graph();
  const ExecPlan& p = task.exec_plan;
  const size_t nc = task.convs.size();
  std::vector<const Step*> step_of(nc, nullptr);
  for (const Step& s : p.steps)
    if (s.kind == StepKind::Conv) step_of[size_t(s.index)] = &s;
  a.packed_offset.resize(nc);
  a.fused_rank.assign(nc, 0);
  a.items.clear();
  std::vector<size_t> first(nc);
  size_t total = 0, max_rows = 0, outs = 0;
  for (size_t ci = 0; ci < nc; ++ci) {
    const ConvTask& ct = task.convs[ci];
    a.packed_offset[ci] = total;
    total += round64(kt.qconv_packed_bytes(ct.geom));
    first[ci] = outs;
    outs += size_t(ct.out_c);
    const size_t K = size_t(ct.kernel * ct.kernel) * size_t(ct.in_c);
    const Int8Way way = int8_way(ct);
    if (way == Int8Way::General) {
      a.items.push_back({int(ci), 0, ct.out_c});
      max_rows = std::max(max_rows, size_t(ct.out_c) * K);
      continue;
    }
    // Whole panels per item; any split gives the same bytes (every output
    // row is computed alone), so ranges are used at any thread count.
    const int step = int(std::max<size_t>(16, kInt8ItemElems / K / 16 * 16));
    for (int o0 = 0; o0 < ct.out_c; o0 += step) {
      const int o1 = std::min(ct.out_c, o0 + step);
      a.items.push_back({int(ci), o0, o1});
      if (way == Int8Way::LowRank) max_rows = std::max(max_rows, size_t(o1 - o0) * K);
    }
  }
  // Largest first: the last items claimed are the small ones, so the
  // workers finish together.
  auto elems = [&](const ApplyItem& it) {
    const ConvTask& ct = task.convs[size_t(it.conv)];
    return size_t(it.o1 - it.o0) * size_t(ct.kernel * ct.kernel) * size_t(ct.in_c);
  };
  std::stable_sort(a.items.begin(), a.items.end(),
                   [&](const ApplyItem& x, const ApplyItem& y) { return elems(x) > elems(y); });
  const int nitems = int(a.items.size());
  const int workers = std::max(1, std::min(threads, nitems));
  a.packed.resize((total + sizeof(float) - 1) / sizeof(float));
  const size_t slice = round_floats(max_rows);  // float rows of one item
  a.ohwi.resize(slice * size_t(workers));
  a.bwork.release();
  a.qmul.resize(outs);
  a.qadd.resize(outs);
  a.qep.assign(nc, kernels::QEpilogue());
  for (size_t ci = 0; ci < nc; ++ci) {
    const Step& st = *step_of[ci];
    kernels::QEpilogue& ep = a.qep[ci];
    ep.in_zp = task.act_zp[size_t(st.in)];
    ep.out_zp = task.act_zp[size_t(st.out)];
    ep.mul = a.qmul.data() + first[ci];
    ep.add = a.qadd.data() + first[ci];
    ep.relu = st.relu;
    if (st.in2 >= 0) {
      ep.res_zp = task.act_zp[size_t(st.in2)];
      ep.res_mul = task.act_scale[size_t(st.in2)] / task.act_scale[size_t(st.out)];
    }
  }
  auto* packed = reinterpret_cast<unsigned char*>(a.packed.data());
  pool.run(nitems, workers, [&](int it, int worker) {
    const ApplyItem item = a.items[size_t(it)];
    const size_t ci = size_t(item.conv);
    apply_int8_item(g, task, task.convs[ci], *step_of[ci], kt, item.o0, item.o1,
                    a.ohwi.data() + slice * size_t(worker), a.qmul.data() + first[ci],
                    a.qadd.data() + first[ci], packed + a.packed_offset[ci]);
  });
  // u8 activations at the plan's offsets (elements); float vectors apart.
  a.arena.resize((p.arena_floats + sizeof(float) - 1) / sizeof(float));
  a.vec_offset.assign(p.shape.size(), 0);
  size_t vec = 0;
  for (size_t v = 0; v < p.shape.size(); ++v) {
    if (g.kind[v] != Kind::Vector) continue;
    a.vec_offset[v] = vec;
    vec += round_floats(p.shape[v].floats());
  }
  a.vec.resize(vec);
  a.qin.resize(p.shape[0].floats());
}

}  // namespace

void apply_task(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, ApplyMode mode, Workers& pool, Applied& a) {
  a.task = nullptr;  // not runnable until complete
  a.kt = &kt;
  a.int8 = task.int8;
  if (task.int8) {
    if (mode != ApplyMode::Merged)
      throw Error("int8 has no unmerged low-rank form: the 'lowrank' mode runs fp32 bases only");
    apply_int8(base, task, kt, threads, pool, a);
    a.task = &task;
    size_scratch(a, threads);
    return;
  }
  a.qep.clear();
  a.vec.release();
  a.qin.release();
  const Graph& g = base.graph();
  size_t total = 0, max_ohwi = 0, max_b = 0;
  a.packed_offset.resize(task.convs.size());
  a.fused_rank.assign(task.convs.size(), 0);
  a.items.clear();
  for (size_t ci = 0; ci < task.convs.size(); ++ci) {
    const ConvTask& ct = task.convs[ci];
    const int r = mode == ApplyMode::FusedLowRank ? ct.rank() : 0;
    a.fused_rank[ci] = r;
    a.packed_offset[ci] = total;
    total += round_floats(r > 0 ? kt.conv_lowrank_packed_floats(ct.geom, r)
                                : kt.conv_packed_floats(ct.geom));
    if (families::needs_general(ct)) {
      max_ohwi =
          std::max(max_ohwi, size_t(ct.out_c) * size_t(ct.kernel * ct.kernel) * size_t(ct.in_c));
      max_b = std::max(max_b, size_t(ct.out_c) * size_t(r));
      a.items.push_back({int(ci), -1, -1});
    }
  }
  const size_t general = a.items.size();  // first: the big, unsplit ones
  // One-pass convs are cut into row ranges so both threads stay busy on a
  // network whose last convs hold most of the weights.
  for (size_t ci = 0; ci < task.convs.size(); ++ci) {
    const ConvTask& ct = task.convs[ci];
    if (families::needs_general(ct)) continue;
    const int K = ct.kernel * ct.kernel * ct.in_c;
    // Kept outputs in multiples of 16 (every ISA's panel width divides 16).
    int outs = int(std::max<size_t>(16, kItemFloats / size_t(K) / 16 * 16));
    if (threads == 1) outs = ct.out_c;  // nothing to balance
    for (int o0 = 0; o0 < ct.out_c; o0 += outs)
      a.items.push_back({int(ci), o0, std::min(ct.out_c, o0 + outs)});
  }
  const int nitems = int(a.items.size());
  const int workers = std::max(1, std::min(threads, nitems));
  a.packed.resize(total);
  // Workspace only for the general path (one slice per worker).
  const size_t slice = round_floats(max_ohwi);
  a.ohwi.resize(general ? slice * size_t(workers) : 0);
  const size_t bslice = round_floats(max_b);
  a.bwork.resize(general ? bslice * size_t(workers) : 0);

  // Nothing below throws. Items go to the caller and helper threads as
  // they come free (Workers), so a helper the OS keeps waiting costs nothing.
  pool.run(nitems, workers, [&](int it, int worker) {
    const ApplyItem item = a.items[size_t(it)];
    const ConvTask& ct = task.convs[size_t(item.conv)];
    const int fused = a.fused_rank[size_t(item.conv)];
    float* dst = a.packed.data() + a.packed_offset[size_t(item.conv)];
    if (item.o0 < 0) {
      apply_general(g, ct, kt, fused, a.ohwi.data() + slice * size_t(worker),
                    a.bwork.data() + bslice * size_t(worker), dst);
      return;
    }
    kt.conv_apply(one_pass_args(g.nodes[size_t(ct.node)], ct, fused), item.o0, item.o1, dst);
  });
  a.arena.resize(task.exec_plan.arena_floats);
  a.task = &task;
  size_scratch(a, threads);
}

}  // namespace spaedge
