// Task application (gather + low-rank merge + delta + BN fold + pack) and the
// executor that runs the plan over the arena.
#include <algorithm>
#include <cstring>

#include "runtime/task.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spaedge {

namespace {
int worker_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
}  // namespace

void size_scratch(Applied& a, int threads) {
    size_t need = 0;
    for (const Step& s : a.task->plan.steps) {
        if (s.kind != StepKind::Conv) continue;
        const int r = a.fused_rank[size_t(s.index)];
        need = std::max(need, r > 0 ? a.kt->conv_lowrank_scratch_floats(s.geom, r, threads)
                                    : a.kt->conv_scratch_floats(s.geom, threads));
    }
    a.scratch.resize(need);
    a.scratch_threads = threads;
}

void apply_task(const BaseModel& base, const Task& task, const kernels::KernelTable& kt,
                int threads, ApplyMode mode, Applied& a) {
    a.task = nullptr;  // not runnable until complete
    a.kt = &kt;
    const Graph& g = base.graph();
    size_t total = 0, max_ohwi = 0, max_b = 0;
    a.packed_offset.resize(task.convs.size());
    a.fused_rank.assign(task.convs.size(), 0);
    for (size_t ci = 0; ci < task.convs.size(); ++ci) {
        const ConvTask& ct = task.convs[ci];
        const int r = mode == ApplyMode::FusedLowRank ? ct.rank : 0;
        a.fused_rank[ci] = r;
        a.packed_offset[ci] = total;
        total += round_floats(r > 0 ? kt.conv_lowrank_packed_floats(ct.geom, r) : kt.conv_packed_floats(ct.geom));
        max_ohwi = std::max(max_ohwi, size_t(ct.out_c) * size_t(ct.kernel * ct.kernel) * size_t(ct.in_c));
        max_b = std::max(max_b, size_t(ct.out_c) * size_t(r));
    }
    // Convs are independent: up to `threads` of them are prepared at once,
    // each with its own slice of the OHWI workspace. Nothing below throws.
    const int nconv = int(task.convs.size());
    const int workers = std::max(1, std::min(threads, nconv));
    const size_t slice = round_floats(max_ohwi);
    a.packed.resize(total);
    a.ohwi.resize(slice * size_t(workers));
    const size_t bslice = round_floats(max_b);
    a.bwork.resize(bslice * size_t(workers));

#pragma omp parallel for num_threads(workers) schedule(dynamic, 1) if (workers > 1)
    for (int ci = 0; ci < nconv; ++ci) {
        const ConvTask& ct = task.convs[size_t(ci)];
        const Node& n = g.nodes[size_t(ct.node)];
        const TensorView& W = *n.weight;
        const size_t kk = size_t(ct.kernel) * size_t(ct.kernel);
        const size_t I = size_t(n.in_channels);
        const size_t Ip = size_t(ct.in_c);
        const int worker = worker_id();
        float* w = a.ohwi.data() + slice * size_t(worker);
        const int fused = a.fused_rank[size_t(ci)];
        // Gather W[out_index][:, in_index] from OIHW into OHWI: sequential
        // writes; the reads stay within one base row (I*k*k floats, L1/L2-sized).
        // The mapping may be unaligned, hence memcpy per element.
        for (size_t o = 0; o < size_t(ct.out_c); ++o) {
            const unsigned char* row = W.data + size_t(ct.out_index[o]) * I * kk * 4;
            float* dst = w + o * kk * Ip;
            for (size_t t = 0; t < kk; ++t) {
                const unsigned char* src = row + 4 * t;
                float* d = dst + t * Ip;
                for (size_t i = 0; i < Ip; ++i) std::memcpy(d + i, src + size_t(ct.in_index[i]) * kk * 4, 4);
            }
        }
        if (ct.rank > 0 && fused == 0)
            kt.lowrank_merge(ct.out_c, ct.in_c, ct.kernel, ct.rank, ct.lora_a.data(),
                             ct.lora_b.data(), w);
        if (!ct.weight_delta.empty()) {
            const float* d = ct.weight_delta.data();  // OIHW
            for (size_t o = 0; o < size_t(ct.out_c); ++o)
                for (size_t i = 0; i < Ip; ++i)
                    for (size_t t = 0; t < kk; ++t) w[(o * kk + t) * Ip + i] += d[(o * Ip + i) * kk + t];
        }
        if (!ct.pointwise_delta.empty()) {
            const size_t c = size_t(ct.kernel / 2) * size_t(ct.kernel) + size_t(ct.kernel / 2);
            const float* d = ct.pointwise_delta.data();  // [O', I']
            for (size_t o = 0; o < size_t(ct.out_c); ++o)
                for (size_t i = 0; i < Ip; ++i) w[(o * kk + c) * Ip + i] += d[o * Ip + i];
        }
        for (size_t j = 0; j < ct.sparse_index.size(); ++j) {
            const size_t f = size_t(ct.sparse_index[j]);  // flat OIHW over [O', I', k, k]
            const size_t o = f / (Ip * kk), i = (f / kk) % Ip, t = f % kk;
            w[(o * kk + t) * Ip + i] += ct.sparse_values[j];
        }
        if (!ct.scale.empty()) {
            for (size_t o = 0; o < size_t(ct.out_c); ++o) {
                const float s = ct.scale[o];
                float* r = w + o * kk * Ip;
                for (size_t j = 0; j < kk * Ip; ++j) r[j] *= s;
            }
        }
        float* dst = a.packed.data() + a.packed_offset[size_t(ci)];
        if (fused > 0) {
            // BN scales output channel o of the whole sum: scale B' rows too.
            const float* b = ct.lora_b.data();
            if (!ct.scale.empty()) {
                float* bs = a.bwork.data() + bslice * size_t(worker);
                for (size_t o = 0; o < size_t(ct.out_c); ++o)
                    for (size_t r = 0; r < size_t(fused); ++r)
                        bs[o * size_t(fused) + r] = ct.lora_b[o * size_t(fused) + r] * ct.scale[o];
                b = bs;
            }
            kt.conv_lowrank_pack(ct.geom, fused, w, ct.lora_a.data(), b, dst);
        } else {
            kt.conv_pack(ct.geom, w, dst);
        }
    }
    a.arena.resize(task.plan.arena_floats);
    a.task = &task;
    size_scratch(a, threads);
}

void execute(Applied& a, int threads, const float* input, int batch, float* logits) {
    const Task& t = *a.task;
    const Plan& p = t.plan;
    const kernels::KernelTable& kt = *a.kt;
    float* arena = a.arena.data();
    const size_t H = size_t(t.height), W = size_t(t.width), C = size_t(t.channels);
    const size_t img = H * W * C;
    const size_t classes = size_t(t.classes());
    for (int b = 0; b < batch; ++b) {
        const float* src = input + size_t(b) * img;
        float* x = arena + p.offset[0];
        for (size_t c = 0; c < C; ++c) {
            const float* plane = src + c * H * W;
            for (size_t i = 0; i < H * W; ++i) x[i * C + c] = plane[i];
        }
        for (const Step& s : p.steps) {
            const float* in = arena + p.offset[size_t(s.in)];
            float* out = arena + p.offset[size_t(s.out)];
            switch (s.kind) {
                case StepKind::Conv: {
                    const ConvTask& ct = t.convs[size_t(s.index)];
                    kernels::Epilogue ep;
                    ep.bias = ct.bias.data();
                    ep.residual = s.in2 >= 0 ? arena + p.offset[size_t(s.in2)] : nullptr;
                    ep.relu = s.relu;
                    const float* packed = a.packed.data() + a.packed_offset[size_t(s.index)];
                    const int r = a.fused_rank[size_t(s.index)];
                    if (r > 0)
                        kt.conv_lowrank(s.geom, r, packed, in, out, ep, a.scratch.data(), threads);
                    else
                        kt.conv(s.geom, packed, in, out, ep, a.scratch.data(), threads);
                    break;
                }
                case StepKind::Relu: {
                    const size_t n = size_t(s.h) * size_t(s.w) * size_t(s.c);
                    for (size_t i = 0; i < n; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
                    break;
                }
                case StepKind::Add: {
                    const float* in2 = arena + p.offset[size_t(s.in2)];
                    const size_t n = size_t(s.h) * size_t(s.w) * size_t(s.c);
                    if (s.relu) {
                        for (size_t i = 0; i < n; ++i) {
                            float v = in[i] + in2[i];
                            out[i] = v > 0.0f ? v : 0.0f;
                        }
                    } else {
                        for (size_t i = 0; i < n; ++i) out[i] = in[i] + in2[i];
                    }
                    break;
                }
                case StepKind::MaxPool:
                    kt.maxpool(s.h, s.w, s.c, s.pool_k, s.pool_s, s.pool_p, in, out, threads);
                    break;
                case StepKind::Gap: kt.global_avgpool(s.h, s.w, s.c, in, out); break;
                case StepKind::Linear: {
                    const LinearTask& lt = t.linears[size_t(s.index)];
                    kt.linear(lt.in_f, lt.out_f, lt.weight.data(), lt.bias.data(), in, out);
                    break;
                }
            }
        }
        std::memcpy(logits + size_t(b) * classes, arena + p.offset[size_t(p.output)],
                    classes * sizeof(float));
    }
}

}  // namespace spaedge
