// Task application: gather + low-rank merge + delta + BN fold + pack
// (apply.h).
#include "runtime/apply.h"

#include <algorithm>

namespace spaedge {

void size_scratch(Applied& a, int threads) {
  size_t need = 0;
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

}  // namespace

void apply_task(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, ApplyMode mode, Workers& pool, Applied& a) {
  a.task = nullptr;  // not runnable until complete
  a.kt = &kt;
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
