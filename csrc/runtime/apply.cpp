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

// Whether the conv carries an adapter update (any tensor family).
bool has_update(const ConvTask& ct) {
#define SPAEDGE_FAMILY(id, ...) \
  if (ct.id) return true;
#include "runtime/families/families.inc"
#undef SPAEDGE_FAMILY
  return false;
}

size_t round64(size_t n) {
  return (n + 63) / 64 * 64;
}

// One conv of an int8 task: its s8 OHWI weight q' and per-channel scale
// wscale' from the int8 base (kept s8 values and BN in the scale without an
// update; dequantize, update, fold BN and requantize with one), packed for
// qconv, and its requantization constants from the step's value parameters.
void apply_int8_conv(const Graph& g, const Task& task, const ConvTask& ct, const Step& st,
                     const kernels::KernelTable& kt, float* w, int8_t* q, float* mul, float* add,
                     kernels::QEpilogue& ep, unsigned char* dst) {
  const Node& n = g.nodes[size_t(ct.node)];
  const size_t kk = size_t(ct.kernel) * size_t(ct.kernel);
  const size_t I = size_t(n.in_channels);
  const size_t Ip = size_t(ct.in_c);
  const size_t row = kk * Ip;
  const float s_in = task.act_scale[size_t(st.in)];
  const float s_out = task.act_scale[size_t(st.out)];
  const bool update = has_update(ct);
  for (size_t o = 0; o < size_t(ct.out_c); ++o) {
    const size_t bo = size_t(ct.out_index[o]);
    const int8_t* src = n.weight_s8 + bo * I * kk;
    const float bs = n.weight_scale[bo];
    if (!update) {
      int8_t* d = q + o * row;
      for (size_t t = 0; t < kk; ++t)
        for (size_t i = 0; i < Ip; ++i) d[t * Ip + i] = src[size_t(ct.in_index[i]) * kk + t];
    } else {
      float* d = w + o * row;
      for (size_t t = 0; t < kk; ++t)
        for (size_t i = 0; i < Ip; ++i)
          d[t * Ip + i] = bs * float(src[size_t(ct.in_index[i]) * kk + t]);
    }
  }
  if (update) families::apply(ct, {kt, 0}, w);  // every update merged, as the fp32 general path
  for (size_t o = 0; o < size_t(ct.out_c); ++o) {
    const float bn = ct.scale.empty() ? 1.0f : ct.scale[o];
    float ws;
    if (!update) {
      ws = n.weight_scale[size_t(ct.out_index[o])] * bn;
    } else {
      float* r = w + o * row;
      float m = 0.0f;
      for (size_t j = 0; j < row; ++j) {
        r[j] = r[j] * bn;
        m = std::max(m, std::fabs(r[j]));
      }
      ws = m > 0.0f ? m / 127.0f : 1.0f;
      int8_t* d = q + o * row;
      for (size_t j = 0; j < row; ++j) {
        const float v = std::nearbyint(r[j] / ws);  // round half to even (default mode)
        d[j] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
    const float sw = s_in * ws;
    mul[o] = sw / s_out;
    add[o] = ct.bias[o] / s_out;
  }
  kt.qconv_pack(ct.geom, q, dst);
  ep = kernels::QEpilogue();
  ep.in_zp = task.act_zp[size_t(st.in)];
  ep.out_zp = task.act_zp[size_t(st.out)];
  ep.mul = mul;
  ep.add = add;
  ep.relu = st.relu;
  if (st.in2 >= 0) {
    ep.res_zp = task.act_zp[size_t(st.in2)];
    ep.res_mul = task.act_scale[size_t(st.in2)] / s_out;
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
  size_t total = 0, max_row = 0, outs = 0;
  for (size_t ci = 0; ci < nc; ++ci) {
    const ConvTask& ct = task.convs[ci];
    a.packed_offset[ci] = total;
    total += round64(kt.qconv_packed_bytes(ct.geom));
    max_row = std::max(max_row, size_t(ct.out_c) * size_t(ct.kernel * ct.kernel) * size_t(ct.in_c));
    first[ci] = outs;
    outs += size_t(ct.out_c);
    a.items.push_back({int(ci), -1, -1});
  }
  const int nitems = int(nc);
  const int workers = std::max(1, std::min(threads, nitems));
  a.packed.resize((total + sizeof(float) - 1) / sizeof(float));
  const size_t slice = round_floats(max_row);             // floats
  const size_t qslice = round_floats((max_row + 3) / 4);  // floats holding s8
  bool updates = false;
  for (const ConvTask& ct : task.convs) updates = updates || has_update(ct);
  a.ohwi.resize(updates ? slice * size_t(workers) : 0);  // dequantized rows: convs with an update
  a.bwork.resize(qslice * size_t(workers));
  a.qmul.resize(outs);
  a.qadd.resize(outs);
  a.qep.assign(nc, kernels::QEpilogue());
  auto* packed = reinterpret_cast<unsigned char*>(a.packed.data());
  pool.run(nitems, workers, [&](int ci, int worker) {
    const ConvTask& ct = task.convs[size_t(ci)];
    apply_int8_conv(g, task, ct, *step_of[size_t(ci)], kt, a.ohwi.data() + slice * size_t(worker),
                    reinterpret_cast<int8_t*>(a.bwork.data() + qslice * size_t(worker)),
                    a.qmul.data() + first[size_t(ci)], a.qadd.data() + first[size_t(ci)],
                    a.qep[size_t(ci)], packed + a.packed_offset[size_t(ci)]);
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
