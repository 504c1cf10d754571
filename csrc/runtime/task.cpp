// A task bundle read and validated against its base (task.h).
#include "runtime/task.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <set>

namespace spaedge {

namespace {

constexpr size_t kMaxValueFloats = kMaxArenaBytes / sizeof(float);

class Loader {
 public:
  Loader(const BaseModel& base, const Bundle& b, Task& t)
      : base_(base), b_(b), t_(t), r_(b, base.graph(), meta_, t.task_params) {}

  // Everything but the int8 activation parameters and the unknown-tensor check.
  void run() {
    read_metadata();
    read_tensors(r_);
    families::read_model(r_, t_.convs);
  }

  // After the execution plan: an int8 task's activation parameters (they
  // belong to the plan's steps), then every tensor must have been used.
  void finish() {
    if (t_.int8) read_activations();
    check_unknown(r_);
  }

 private:
  const BaseModel& base_;
  const Bundle& b_;
  Task& t_;
  TaskMetadata meta_;
  families::Reader r_;
  std::vector<std::vector<int32_t>> lists_;  // kept channels per value id
  std::vector<std::string> list_src_;        // what defined each list
  std::vector<ValueShape> shapes_;

  // ---- metadata -----------------------------------------------------------
  void read_metadata() {
    // docs/int8.md: a task runs only on a base of its own precision.
    if (b_.int8() != base_.int8())
      throw Error("task bundle " + b_.path() + " is " + b_.precision() + " but the loaded base " +
                  base_.path() + " is " + base_.bundle().precision() +
                  ": an int8 task runs only on the int8 base it was quantized for, an fp32 task "
                  "only on an fp32 base (load the base of the task's precision)");
    t_.int8 = b_.int8();
    const std::string& bh = b_.meta("base_hash");
    if (bh != base_.content_hash())
      throw Error("task bundle " + b_.path() + " was made for base " + bh +
                  ", but the loaded base is " + base_.content_hash() +
                  ": pack the task against this base or load the right base");
    meta_ = read_task_metadata(b_);
    const TaskMetadata& m = meta_;
    t_.name = m.name;
    t_.method = m.method;
    t_.info = m.info;
    t_.labels = m.labels;
    t_.channels = m.channels;
    t_.height = m.height;
    t_.width = m.width;
    t_.mean = m.mean;
    t_.std = m.std;
    const int base_c = base_.graph().input_channels;
    if (t_.channels != base_c)
      b_.fail("metadata 'input': channels is " + std::to_string(t_.channels) +
              " but the base takes " + std::to_string(base_c) + " input channels");
  }

  // ---- tensors ------------------------------------------------------------
  std::vector<int32_t> index(const TensorView& t, int limit, const char* side) {
    if (t.shape.size() != 1)
      b_.fail_tensor(t.name, "shape " + t.shape_str() + ", expected a 1-D list of channels");
    if (t.numel == 0) b_.fail_tensor(t.name, "keeps no channels (at least one is required)");
    if (t.numel > size_t(limit))
      b_.fail_tensor(t.name, "keeps " + std::to_string(t.numel) + " channels but the conv has " +
                                 std::to_string(limit) + " " + side + " channels");
    std::vector<int32_t> v(t.numel);
    for (size_t i = 0; i < t.numel; ++i) {
      int32_t x = t.i32(i);
      if (x < 0 || x >= limit)
        b_.fail_tensor(t.name, "index " + std::to_string(x) + " out of range for " +
                                   std::to_string(limit) + " " + side + " channels");
      if (i > 0 && x <= v[i - 1])
        b_.fail_tensor(t.name, "not strictly increasing: element " + std::to_string(i) + " is " +
                                   std::to_string(x) + " after " + std::to_string(v[i - 1]));
      v[i] = x;
    }
    return v;
  }

  void read_tensors(families::Reader& r) {
    const Graph& g = base_.graph();
    const size_t nv = g.value_names.size();
    lists_.assign(nv, {});
    list_src_.assign(nv, "");
    shapes_.assign(nv, {});
    std::vector<int> conv_of_node(g.nodes.size(), -1);

    lists_[0].resize(size_t(g.input_channels));
    for (int c = 0; c < g.input_channels; ++c) lists_[0][size_t(c)] = c;
    list_src_[0] = "the graph input '" + g.input_name + "'";
    shapes_[0] = {t_.height, t_.width, t_.channels};
    if (shapes_[0].floats() > kMaxValueFloats)
      b_.fail("metadata 'input': " + std::to_string(t_.channels) + "x" + std::to_string(t_.height) +
              "x" + std::to_string(t_.width) + " is too large an input");

    for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
      const Node& n = g.nodes[ni];
      const int in = n.inputs[0];
      const ValueShape& is = shapes_[size_t(in)];
      ValueShape os = is;
      std::vector<int32_t> out_list = lists_[size_t(in)];
      std::string out_src = list_src_[size_t(in)];
      switch (n.op) {
        case Op::Conv: {
          ConvTask ct;
          ct.node = int(ni);
          ct.kernel = n.kernel;
          const std::string L = n.name;
          const TensorView* oi =
              r.get(L + ".out_index", DType::I32, true, "kept output channels of conv '" + L + "'");
          const TensorView* ii =
              r.get(L + ".in_index", DType::I32, true, "kept input channels of conv '" + L + "'");
          ct.out_index = index(*oi, n.out_channels, "output");
          ct.in_index = index(*ii, n.in_channels, "input");
          if (ct.in_index != lists_[size_t(in)]) {
            const auto& want = lists_[size_t(in)];
            std::string why;
            if (want.size() != ct.in_index.size()) {
              why = "keeps " + std::to_string(ct.in_index.size()) + " channels but its input '" +
                    g.value_names[size_t(in)] + "' keeps " + std::to_string(want.size());
            } else {
              size_t k = 0;
              while (want[k] == ct.in_index[k]) ++k;
              why = "element " + std::to_string(k) + " is " + std::to_string(ct.in_index[k]) +
                    " but its input '" + g.value_names[size_t(in)] + "' keeps channel " +
                    std::to_string(want[k]) + " there";
            }
            b_.fail_tensor(ii->name, why + " (set by " + list_src_[size_t(in)] +
                                         "); in_index must equal the channels its "
                                         "input keeps");
          }
          ct.out_c = int(ct.out_index.size());
          ct.in_c = int(ct.in_index.size());
          const int64_t O = ct.out_c, I = ct.in_c, k = n.kernel;
          families::read_conv(r, {n, O, I, k}, ct);
          if (const TensorView* tb = r.get(L + ".bias", DType::F32, false, "")) {
            r.expect_shape(*tb, {O}, "(one per kept output channel)");
            ct.bias = r.floats(*tb);
          } else if (n.bias) {
            ct.bias.resize(size_t(O));
            for (size_t o = 0; o < size_t(O); ++o)
              ct.bias[o] = n.bias->f32(size_t(ct.out_index[o]));
          } else {
            ct.bias.assign(size_t(O), 0.0f);
          }
          if (is.h + 2 * n.padding < n.kernel || is.w + 2 * n.padding < n.kernel)
            b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" +
                    std::to_string(t_.width) + " is too small: conv '" + L + "' gets " +
                    std::to_string(is.h) + "x" + std::to_string(is.w) + " with kernel " +
                    std::to_string(n.kernel));
          ct.geom.in_h = is.h;
          ct.geom.in_w = is.w;
          ct.geom.in_c = ct.in_c;
          ct.geom.out_c = ct.out_c;
          ct.geom.kernel = n.kernel;
          ct.geom.stride = n.stride;
          ct.geom.pad = n.padding;
          os = {ct.geom.out_h(), ct.geom.out_w(), ct.out_c};
          t_.macs += uint64_t(O) * uint64_t(I) * uint64_t(k * k) * uint64_t(os.h) * uint64_t(os.w);
          out_list = ct.out_index;
          out_src = "'" + oi->name + "'";
          conv_of_node[ni] = int(t_.convs.size());
          t_.convs.push_back(std::move(ct));
          break;
        }
        case Op::BatchNorm: {
          ConvTask& ct = t_.convs[size_t(conv_of_node[size_t(g.producer[size_t(in)])])];
          const int64_t C = int64_t(out_list.size());
          const std::string why =
              "(one per channel kept by conv '" + g.nodes[size_t(ct.node)].name + "')";
          const char* parts[4] = {".weight", ".bias", ".running_mean", ".running_var"};
          std::vector<float> p[4];
          for (int k = 0; k < 4; ++k) {
            const TensorView* t = r.get(n.name + parts[k], DType::F32, true,
                                        "parameter of batchnorm '" + n.name + "'");
            r.expect_shape(*t, {C}, why);
            p[k] = r.floats(*t);
          }
          ct.scale.resize(size_t(C));
          for (size_t c = 0; c < size_t(C); ++c) {
            const double var = double(p[3][c]) + n.eps;
            if (!(var > 0))
              b_.fail_tensor(n.name + ".running_var",
                             "element " + std::to_string(c) + " plus eps is not positive");
            const double s = double(p[0][c]) / std::sqrt(var);
            ct.scale[c] = float(s);
            ct.bias[c] = float((double(ct.bias[c]) - double(p[2][c])) * s + double(p[1][c]));
          }
          break;
        }
        case Op::Relu:
          break;
        case Op::Add: {
          const int in2 = n.inputs[1];
          if (lists_[size_t(in2)] != lists_[size_t(in)]) {
            std::string src = list_src_[size_t(in)];
            std::string src2 = list_src_[size_t(in2)];
            std::string tensor =
                src.size() > 2 && src[0] == '\'' ? src.substr(1, src.size() - 2) : "";
            std::string msg = "kept channels differ between the inputs of add '" + n.name + "': '" +
                              g.value_names[size_t(in)] + "' keeps " +
                              std::to_string(lists_[size_t(in)].size()) + " (set by " + src +
                              "), '" + g.value_names[size_t(in2)] + "' keeps " +
                              std::to_string(lists_[size_t(in2)].size()) + " (set by " + src2 +
                              "); both sides of a residual add must keep the same channels";
            if (!tensor.empty()) b_.fail_tensor(tensor, msg);
            b_.fail(msg);
          }
          break;
        }
        case Op::MaxPool: {
          if (is.h + 2 * n.padding < n.kernel || is.w + 2 * n.padding < n.kernel)
            b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" +
                    std::to_string(t_.width) + " is too small: maxpool '" + n.name + "' gets " +
                    std::to_string(is.h) + "x" + std::to_string(is.w) + " with kernel " +
                    std::to_string(n.kernel));
          os.h = (is.h + 2 * n.padding - n.kernel) / n.stride + 1;
          os.w = (is.w + 2 * n.padding - n.kernel) / n.stride + 1;
          break;
        }
        case Op::Gap:
          os = {1, 1, is.c};
          break;
        case Op::Linear: {
          LinearTask lt;
          lt.node = int(ni);
          lt.in_f = int(out_list.size());
          const TensorView* w = r.get(n.name + ".weight", DType::F32, true,
                                      "weight of the linear head '" + n.name + "'");
          if (w->shape.size() != 2 || w->shape[1] != lt.in_f || w->shape[0] < 1 ||
              w->shape[0] > kMaxClasses)
            b_.fail_tensor(w->name, "shape " + w->shape_str() + ", expected [classes, " +
                                        std::to_string(lt.in_f) + "] (" + std::to_string(lt.in_f) +
                                        " = channels kept by its input '" +
                                        g.value_names[size_t(in)] + "')");
          lt.out_f = int(w->shape[0]);
          const TensorView* bt =
              r.get(n.name + ".bias", DType::F32, true, "bias of the linear head '" + n.name + "'");
          r.expect_shape(*bt, {lt.out_f}, "(one per class of '" + w->name + "')");
          lt.weight = r.floats(*w);
          lt.bias = r.floats(*bt);
          t_.macs += uint64_t(lt.in_f) * uint64_t(lt.out_f);
          out_list.resize(size_t(lt.out_f));
          for (int c = 0; c < lt.out_f; ++c) out_list[size_t(c)] = c;
          out_src = "'" + w->name + "'";
          os = {1, 1, lt.out_f};
          t_.linears.push_back(std::move(lt));
          break;
        }
      }
      if (os.floats() > kMaxValueFloats)
        b_.fail("metadata 'input': " + std::to_string(t_.height) + "x" + std::to_string(t_.width) +
                " makes the output of node '" + n.name + "' too large (over the limit of " +
                std::to_string(kMaxArenaBytes >> 20) + " MiB of activations)");
      lists_[size_t(n.out)] = std::move(out_list);
      list_src_[size_t(n.out)] = out_src;
      shapes_[size_t(n.out)] = os;
    }
    const size_t classes = lists_[size_t(g.output)].size();
    if (classes != t_.labels.size())
      b_.fail("metadata 'labels' has " + std::to_string(t_.labels.size()) +
              " labels but the output '" + g.value_names[size_t(g.output)] + "' has " +
              std::to_string(classes) + " classes (set by " + list_src_[size_t(g.output)] + ")");
    t_.exec_plan.shape = shapes_;
  }

  // docs/int8.md (b): '<value>.act_scale' F32 [1] (finite, > 0) and
  // '<value>.act_zero_point' I32 [1] (0..255) for the graph input and the end
  // of every conv chain; a maxpool's output has its input's. Every add must
  // be fused into a conv chain and every relu end one.
  void read_activations() {
    const Graph& g = base_.graph();
    const ExecPlan& p = t_.exec_plan;
    const size_t nv = g.value_names.size();
    t_.act_scale.assign(nv, 0.0f);
    t_.act_zp.assign(nv, -1);
    auto read = [&](int v) {
      const std::string& V = g.value_names[size_t(v)];
      const std::string what = "int8 quantization of value '" + V + "'";
      const TensorView* st = r_.get(V + ".act_scale", DType::F32, true, "scale, " + what);
      const TensorView* zt = r_.get(V + ".act_zero_point", DType::I32, true, "zero point, " + what);
      r_.expect_shape(*st, {1}, "(one scale per value)");
      r_.expect_shape(*zt, {1}, "(one zero point per value)");
      const float sc = st->f32(0);
      if (!(std::isfinite(sc) && sc > 0)) {
        char buf[48];
        std::snprintf(buf, sizeof buf, "%g", double(sc));
        b_.fail_tensor(st->name, std::string("is ") + buf +
                                     ", an activation scale must be "
                                     "finite and > 0");
      }
      const int32_t z = zt->i32(0);
      if (z < 0 || z > 255)
        b_.fail_tensor(zt->name,
                       "is " + std::to_string(z) + ", a u8 zero point must be in [0, 255]");
      t_.act_scale[size_t(v)] = sc;
      t_.act_zp[size_t(v)] = int(z);
    };
    read(0);
    for (const Step& s : p.steps) {
      switch (s.kind) {
        case StepKind::Conv: {
          // qconv accumulates in int32 exactly up to K = k*k*in_c4 = 65536
          // (kernels.inc, qconv_packed_bytes).
          const ConvTask& ct = t_.convs[size_t(s.index)];
          const int64_t K = int64_t(ct.kernel) * ct.kernel * ((int64_t(ct.in_c) + 3) / 4 * 4);
          if (K > 65536)
            b_.fail("int8: conv '" + g.nodes[size_t(ct.node)].name + "' sums " + std::to_string(K) +
                    " products per output (kernel^2 x kept inputs rounded up to 4); the int8 "
                    "kernels sum at most 65536 exactly: run this task in fp32");
          read(s.out);
          break;
        }
        case StepKind::MaxPool:
          t_.act_scale[size_t(s.out)] = t_.act_scale[size_t(s.in)];
          t_.act_zp[size_t(s.out)] = t_.act_zp[size_t(s.in)];
          break;
        case StepKind::Relu:
        case StepKind::Add:
          b_.fail("int8: node '" + s.label + "' (" + (s.kind == StepKind::Add ? "add" : "relu") +
                  ") is not fused into a conv chain; the int8 executor has no standalone " +
                  (s.kind == StepKind::Add ? "add" : "relu") +
                  " (docs/int8.md (b)): run this graph in fp32");
        case StepKind::Gap:
        case StepKind::Linear:
          break;
      }
    }
  }

  void check_unknown(const families::Reader& r) {
    for (const auto& t : b_.tensors())
      if (!r.used(t.name))
        b_.fail_tensor(t.name,
                       "unknown tensor: no graph node of the base uses it (task tensors "
                       "are <conv>.out_index, .in_index, .bias" +
                           families::tensor_names() +
                           "; <batchnorm>.weight/.bias/.running_mean/.running_var; "
                           "<linear>.weight/.bias)");
  }
};

}  // namespace

Task::Task(const BaseModel& base, const std::string& p) {
  Bundle b(p, "spaedge-task");
  path = p;
  bundle_bytes = b.file_size();
  Loader loader(base, b, *this);
  loader.run();
  build_exec_plan(base.graph(), *this);
  loader.finish();
  if (exec_plan.arena_floats > kMaxArenaBytes / sizeof(float))
    b.fail("metadata 'input': a " + std::to_string(channels) + "x" + std::to_string(height) + "x" +
           std::to_string(width) + " input needs " +
           std::to_string((exec_plan.arena_floats * sizeof(float)) >> 20) +
           " MiB of activations in this network (limit " + std::to_string(kMaxArenaBytes >> 20) +
           " MiB)");
}

}  // namespace spaedge
