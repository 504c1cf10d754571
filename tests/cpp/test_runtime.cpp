// Runtime tests: base graph validation, task validation against the base,
// numerics against a direct double-precision reference, switching, threads.
#include <atomic>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include "runtime/task.h"
#include "runtime/testing.h"
#include "runtime/workers.h"
#include "spaedge/bundle.h"
#include "spaedge/runtime.h"
#include "test_bundle_writer.h"

using spaedge::Runtime;
using tb::TempDir;

namespace {

// ---- the tiny model ------------------------------------------------------------------
// x(2) -> c1 conv3x3 (2->4, base bias) -> b1 -> r1 -> c2 conv3x3 (4->4) -> b2
//      -> add(b2, r1) -> r2 -> gap -> fc
struct NodeSpec {
  std::string json;
};

std::string conv_node(const std::string& name, const std::string& in, int cin, int cout, int k,
                      int stride, int pad) {
  return "{\"name\":\"" + name + "\",\"op\":\"conv\",\"inputs\":[\"" + in + "\"],\"output\":\"" +
         name + "\",\"kernel\":" + std::to_string(k) + ",\"stride\":" + std::to_string(stride) +
         ",\"padding\":" + std::to_string(pad) + ",\"in_channels\":" + std::to_string(cin) +
         ",\"out_channels\":" + std::to_string(cout) + "}";
}
std::string simple_node(const std::string& op, const std::string& name, const std::string& in,
                        const std::string& extra = "") {
  return "{\"name\":\"" + name + "\",\"op\":\"" + op + "\",\"inputs\":[" + in + "],\"output\":\"" +
         name + "\"" + extra + "}";
}
std::string q(const std::string& s) {
  return "\"" + s + "\"";
}

std::vector<std::string> tiny_nodes() {
  return {
      conv_node("c1", "x", 2, 4, 3, 1, 1),
      simple_node("batchnorm", "b1", q("c1"), ",\"eps\":1e-5"),
      simple_node("relu", "r1", q("b1")),
      conv_node("c2", "r1", 4, 4, 3, 2, 1),
      simple_node("batchnorm", "b2", q("c2"), ",\"eps\":0.001"),
      conv_node("down", "r1", 4, 4, 1, 2, 0),
      simple_node("add", "a", q("b2") + "," + q("down")),
      simple_node("relu", "r2", q("a")),
      simple_node("gap", "g", q("r2")),
      simple_node("linear", "fc", q("g")),
  };
}

std::string graph_json(const std::vector<std::string>& nodes, const std::string& output = "fc",
                       int input_channels = 2) {
  std::string s =
      "{\"input\":\"x\",\"input_channels\":" + std::to_string(input_channels) + ",\"nodes\":[";
  for (size_t i = 0; i < nodes.size(); ++i) s += (i ? "," : "") + nodes[i];
  return s + "],\"output\":\"" + output + "\"}";
}

std::vector<float> seq(size_t n, float scale, float offset = 0.0f) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = offset + scale * float(std::sin(double(i) * 1.7 + 0.3));
  return v;
}

struct Model {
  std::map<std::string, std::vector<float>> base;  // OIHW weights and biases
  std::map<std::string, std::vector<int64_t>> base_shape;
};

Model tiny_base() {
  Model m;
  m.base["c1.weight"] = seq(4 * 2 * 9, 0.4f);
  m.base_shape["c1.weight"] = {4, 2, 3, 3};
  m.base["c1.bias"] = seq(4, 0.2f, 0.05f);
  m.base_shape["c1.bias"] = {4};
  m.base["c2.weight"] = seq(4 * 4 * 9, 0.3f, 0.01f);
  m.base_shape["c2.weight"] = {4, 4, 3, 3};
  m.base["down.weight"] = seq(4 * 4, 0.5f, -0.02f);
  m.base_shape["down.weight"] = {4, 4, 1, 1};
  return m;
}

std::vector<tb::Tensor> base_tensors(const Model& m) {
  std::vector<tb::Tensor> t;
  for (const auto& kv : m.base)
    t.push_back(tb::f32(kv.first, m.base_shape.at(kv.first), kv.second));
  return t;
}

std::vector<uint8_t> base_bytes(const Model& m, const std::string& graph) {
  return tb::bundle(base_tensors(m),
                    {{"format", "spaedge-base"}, {"model", "tiny"}, {"graph", graph}});
}

// Task tensors (kept channels: c1/c2/down out {0,2,3}; head 3 classes).
struct TaskSpec {
  std::map<std::string, std::vector<int32_t>> idx;
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> f;
  std::map<std::string, std::vector<uint8_t>> u8;  // 1-D U8 tensors (sparse position masks)
  int h = 5, w = 4, classes = 3;
  std::string name = "tiny";
};

TaskSpec tiny_task(float salt = 0.0f) {
  TaskSpec t;
  t.idx["c1.out_index"] = {0, 2, 3};
  t.idx["c1.in_index"] = {0, 1};
  t.idx["c2.out_index"] = {0, 2, 3};
  t.idx["c2.in_index"] = {0, 2, 3};
  t.idx["down.out_index"] = {0, 2, 3};
  t.idx["down.in_index"] = {0, 2, 3};
  t.f["c1.lora_a"] = {{1, 2}, seq(2, 0.5f, salt)};
  t.f["c1.lora_b"] = {{3, 1}, seq(3, 0.7f)};
  t.f["c2.weight_delta"] = {{3, 3, 3, 3}, seq(81, 0.05f, salt)};
  t.f["c2.lora_a"] = {{2, 3}, seq(6, 0.2f)};
  t.f["c2.lora_b"] = {{3, 2}, seq(6, 0.3f, salt)};
  t.f["down.bias"] = {{3}, seq(3, 0.1f)};
  for (const char* bn : {"b1", "b2"}) {
    const std::string b = bn;
    t.f[b + ".weight"] = {{3}, seq(3, 0.2f, 1.0f + salt)};
    t.f[b + ".bias"] = {{3}, seq(3, 0.1f)};
    t.f[b + ".running_mean"] = {{3}, seq(3, 0.1f, 0.02f)};
    t.f[b + ".running_var"] = {{3}, seq(3, 0.2f, 0.8f)};
  }
  t.f["fc.weight"] = {{3, 3}, seq(9, 0.6f, salt)};
  t.f["fc.bias"] = {{3}, seq(3, 0.1f)};
  return t;
}

tb::Meta task_meta(const TaskSpec& t, const std::string& base_hash) {
  std::string labels = "[";
  for (int i = 0; i < t.classes; ++i) labels += (i ? ",\"c" : "\"c") + std::to_string(i) + "\"";
  labels += "]";
  return {{"format", "spaedge-task"},
          {"base_hash", base_hash},
          {"task", t.name},
          {"labels", labels},
          {"input", "{\"channels\":2,\"height\":" + std::to_string(t.h) + ",\"width\":" +
                        std::to_string(t.w) + ",\"mean\":[0.5,0.4],\"std\":[0.2,0.3]}"},
          {"method", "splora"},
          {"info", "{}"}};
}

std::vector<uint8_t> task_bytes(const TaskSpec& t, const std::string& base_hash) {
  std::vector<tb::Tensor> ts;
  for (const auto& kv : t.idx) ts.push_back(tb::i32(kv.first, kv.second));
  for (const auto& kv : t.f) ts.push_back(tb::f32(kv.first, kv.second.first, kv.second.second));
  for (const auto& kv : t.u8) ts.push_back(tb::u8(kv.first, kv.second));
  return tb::bundle(ts, task_meta(t, base_hash));
}

// ---- double-precision reference over NCHW ------------------------------------------
using Act = std::vector<double>;  // C x H x W
struct Shape3 {
  int c, h, w;
};

Act ref_conv(const Act& x, Shape3 s, const std::vector<double>& w, int O, int k, int stride,
             int pad, Shape3& out) {
  out = {O, (s.h + 2 * pad - k) / stride + 1, (s.w + 2 * pad - k) / stride + 1};
  Act y(size_t(O * out.h * out.w), 0.0);
  for (int o = 0; o < O; ++o)
    for (int oy = 0; oy < out.h; ++oy)
      for (int ox = 0; ox < out.w; ++ox) {
        double acc = 0;
        for (int i = 0; i < s.c; ++i)
          for (int ky = 0; ky < k; ++ky)
            for (int kx = 0; kx < k; ++kx) {
              int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
              if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
              acc += w[size_t(((o * s.c + i) * k + ky) * k + kx)] *
                     x[size_t((i * s.h + iy) * s.w + ix)];
            }
        y[size_t((o * out.h + oy) * out.w + ox)] = acc;
      }
  return y;
}

std::vector<double> task_w(const Model& m, const TaskSpec& t, const std::string& L, int I, int k) {
  const auto& oi = t.idx.at(L + ".out_index");
  const auto& ii = t.idx.at(L + ".in_index");
  const auto& W = m.base.at(L + ".weight");
  const size_t Op = oi.size(), Ip = ii.size();
  std::vector<double> w(Op * Ip * size_t(k * k));
  for (size_t o = 0; o < Op; ++o)
    for (size_t i = 0; i < Ip; ++i)
      for (int tt = 0; tt < k * k; ++tt)
        w[(o * Ip + i) * size_t(k * k) + size_t(tt)] =
            W[(size_t(oi[o]) * size_t(I) + size_t(ii[i])) * size_t(k * k) + size_t(tt)];
  if (t.f.count(L + ".lora_a")) {
    const auto& a = t.f.at(L + ".lora_a");
    const auto& b = t.f.at(L + ".lora_b");
    const size_t r = size_t(a.first[0]);
    const int c = k / 2;
    for (size_t o = 0; o < Op; ++o)
      for (size_t i = 0; i < Ip; ++i) {
        double s = 0;
        for (size_t j = 0; j < r; ++j)
          s += double(b.second[o * r + j]) * double(a.second[j * Ip + i]);
        w[(o * Ip + i) * size_t(k * k) + size_t(c * k + c)] += s;
      }
  }
  if (t.f.count(L + ".weight_delta")) {
    const auto& d = t.f.at(L + ".weight_delta").second;
    for (size_t j = 0; j < w.size(); ++j) w[j] += d[j];
  }
  return w;
}

void add_bias(Act& y, Shape3 s, const std::vector<double>& b) {
  for (int c = 0; c < s.c; ++c)
    for (int j = 0; j < s.h * s.w; ++j) y[size_t(c * s.h * s.w + j)] += b[size_t(c)];
}

void ref_bn(Act& y, Shape3 s, const TaskSpec& t, const std::string& N, double eps) {
  const auto& g = t.f.at(N + ".weight").second;
  const auto& b = t.f.at(N + ".bias").second;
  const auto& m = t.f.at(N + ".running_mean").second;
  const auto& v = t.f.at(N + ".running_var").second;
  for (int c = 0; c < s.c; ++c)
    for (int j = 0; j < s.h * s.w; ++j) {
      double& z = y[size_t(c * s.h * s.w + j)];
      z = (z - m[size_t(c)]) / std::sqrt(double(v[size_t(c)]) + eps) * g[size_t(c)] + b[size_t(c)];
    }
}

std::vector<double> reference(const Model& m, const TaskSpec& t, const float* x_nchw) {
  const int K = int(t.idx.at("c1.out_index").size());  // kept channels (c1 = c2 = down outputs)
  Shape3 s{2, t.h, t.w}, s1, s2, s3;
  Act x(x_nchw, x_nchw + 2 * t.h * t.w);
  Act y1 = ref_conv(x, s, task_w(m, t, "c1", 2, 3), K, 3, 1, 1, s1);
  std::vector<double> b1;
  for (int32_t o : t.idx.at("c1.out_index")) b1.push_back(m.base.at("c1.bias")[size_t(o)]);
  add_bias(y1, s1, b1);
  ref_bn(y1, s1, t, "b1", 1e-5);
  for (auto& v : y1) v = std::max(v, 0.0);
  Act y2 = ref_conv(y1, s1, task_w(m, t, "c2", 4, 3), K, 3, 2, 1, s2);
  ref_bn(y2, s2, t, "b2", 0.001);
  Act y3 = ref_conv(y1, s1, task_w(m, t, "down", 4, 1), K, 1, 2, 0, s3);
  const auto& db = t.f.at("down.bias").second;
  add_bias(y3, s3, std::vector<double>(db.begin(), db.end()));
  for (size_t j = 0; j < y2.size(); ++j) y2[j] = std::max(y2[j] + y3[j], 0.0);
  std::vector<double> g(size_t(K), 0.0);
  for (int c = 0; c < K; ++c) {
    for (int j = 0; j < s2.h * s2.w; ++j) g[size_t(c)] += y2[size_t(c * s2.h * s2.w + j)];
    g[size_t(c)] /= s2.h * s2.w;
  }
  const auto& fw = t.f.at("fc.weight").second;
  const auto& fb = t.f.at("fc.bias").second;
  std::vector<double> out(size_t(t.classes));
  for (int o = 0; o < t.classes; ++o) {
    out[size_t(o)] = fb[size_t(o)];
    for (int c = 0; c < K; ++c) out[size_t(o)] += fw[size_t(o * K + c)] * g[size_t(c)];
  }
  return out;
}

bool close(const float* got, const std::vector<double>& want) {
  double mx = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    mx = std::max(mx, std::fabs(want[i]));
    err = std::max(err, std::fabs(double(got[i]) - want[i]));
  }
  return err <= 1e-4 * (1 + mx);
}

// ---- fixtures -----------------------------------------------------------------------------
struct Files {
  TempDir dir;
  Model m = tiny_base();
  std::string base, base_hash;
  Files() {
    base = dir.file("tiny_base.safetensors");
    tb::write_file(base, base_bytes(m, graph_json(tiny_nodes())));
    spaedge::Bundle b(base);
    base_hash = b.content_hash();
  }
  std::string task(const std::string& name, const TaskSpec& t) const {
    const std::string p = dir.file(name);
    tb::write_file(p, task_bytes(t, base_hash));
    return p;
  }
};

void test_numerics(const Files& f) {
  Runtime rt(f.base, 1);
  TaskSpec t = tiny_task();
  const std::string p = f.task("tiny_task.safetensors", t);
  CHECK(rt.load_task(p) == "tiny");
  CHECK(rt.active_task() == "tiny");
  CHECK(rt.tasks() == std::vector<std::string>{"tiny"});
  spaedge::TaskInfo info = rt.task_info("tiny");
  CHECK(info.classes == 3 && info.channels == 2 && info.height == 5 && info.width == 4);
  CHECK(info.labels.size() == 3 && info.labels[2] == "c2" && info.method == "splora");
  CHECK(info.mean.size() == 2 && info.std[1] == 0.3f);
  CHECK(info.macs > 0 && info.bundle_bytes > 0 && info.path == p);
  std::vector<float> x = seq(2 * 2 * 5 * 4, 1.0f);
  std::vector<float> y(6, -1.0f);
  rt.run(x.data(), 2, y.data());
  CHECK_MSG(close(y.data(), reference(f.m, t, x.data())), "image 0");
  CHECK_MSG(close(y.data() + 3, reference(f.m, t, x.data() + 40)), "image 1");
  // Checked overload and threads.
  std::vector<float> y2(6);
  rt.set_threads(2);
  CHECK(rt.threads() == 2);
  rt.run(x.data(), x.size(), 2, y2.data(), y2.size());
  CHECK(close(y2.data(), reference(f.m, t, x.data())));
  EXPECT_ERROR(rt.run(x.data(), x.size() - 1, 2, y2.data(), y2.size()), "run: input has 79 floats",
               "task 'tiny' needs 2 x 2 x 5 x 4");
  EXPECT_ERROR(rt.run(x.data(), x.size(), 2, y2.data(), 5), "logits buffer has 5 floats");
  EXPECT_ERROR(rt.run(x.data(), 0, y.data()), "batch must be >= 1");
  EXPECT_ERROR(rt.run(nullptr, 1, y.data()), "null");
  EXPECT_ERROR(rt.set_threads(-1), "threads must be in [0, 1024]");
  // Fused low-rank mode gives the same logits.
  CHECK(rt.mode() == "merged");
  CHECK(rt.set_mode("lowrank") >= 0.0);
  CHECK(rt.mode() == "lowrank" && rt.active_task() == "tiny");
  std::fill(y2.begin(), y2.end(), -7.0f);
  rt.run(x.data(), 2, y2.data());
  CHECK(close(y2.data(), reference(f.m, t, x.data())) &&
        close(y2.data() + 3, reference(f.m, t, x.data() + 40)));
  EXPECT_ERROR(rt.set_mode("fast"), "mode must be 'merged' or 'lowrank'");
  rt.set_mode("merged");
  rt.set_threads(0);
  CHECK(rt.threads() >= 1);
  CHECK(!rt.isa().empty());
  CHECK(rt.base_hash() == f.base_hash && rt.base_model() == "tiny" && rt.base_path() == f.base);
  CHECK(rt.working_set_bytes() > 0);
}

// ---- sparse low-rank factors (SparseAdapter on SPLoRA) ---------------------------------
// Conv L's factors A [r, I] and B [O, r] (zeros included) set densely in `dense`
// and, in `sparse`, stored as their nonzero entries: lora_rank plus
// lora_{a,b}_values at the set bits of lora_{a,b}_mask (flat row-major positions).
// `name`_values and `name`_mask of the nonzero entries of `dense` (the format's
// bitmask: bit j % 8 of byte j / 8, least significant first, for flat position j).
void set_sparse(TaskSpec& t, const std::string& name, const std::vector<float>& dense) {
  std::vector<float> values;
  std::vector<uint8_t> mask((dense.size() + 7) / 8, 0);
  for (size_t j = 0; j < dense.size(); ++j)
    if (dense[j] != 0.0f) {
      values.push_back(dense[j]);
      mask[j / 8] = uint8_t(mask[j / 8] | (1u << (j % 8)));
    }
  t.f[name + "_values"] = {{int64_t(values.size())}, values};
  t.u8[name + "_mask"] = mask;
}

void set_factors(TaskSpec& dense, TaskSpec& sparse, const std::string& L, int64_t r, int64_t O,
                 int64_t I, const std::vector<float>& a, const std::vector<float>& b) {
  dense.f[L + ".lora_a"] = {{r, I}, a};
  dense.f[L + ".lora_b"] = {{O, r}, b};
  sparse.f.erase(L + ".lora_a");
  sparse.f.erase(L + ".lora_b");
  sparse.idx[L + ".lora_rank"] = {int32_t(r)};
  for (const auto& kv :
       {std::make_pair(std::string(".lora_a"), &a), std::make_pair(std::string(".lora_b"), &b)})
    set_sparse(sparse, L + kv.first, *kv.second);
}

// c1's factors (rank 1, all entries stored) in the sparse form.
void sparse_c1(TaskSpec& t) {
  TaskSpec dense = t;
  set_factors(dense, t, "c1", 1, 3, 2, dense.f.at("c1.lora_a").second,
              dense.f.at("c1.lora_b").second);
}

// A task with sparse factors runs as the same task with them dense: the
// low-rank path (c1: rank 2 declared, one component without B entries; down:
// 1x1), the pointwise fallback (c2: its 2 used components of 3 are larger
// dense than their 3x3 product, on top of its weight_delta), and a conv with
// no stored entry at all; both modes, two threads.
void test_sparse_factors(const Files& f) {
  TaskSpec dense = tiny_task(), sparse = tiny_task();
  sparse.name = "sparse";
  set_factors(dense, sparse, "c1", 2, 3, 2, {0.5f, -0.3f, 0.0f, 0.8f},
              {0.0f, 0.7f, 0.0f, -0.4f, 0.0f, 0.2f});
  set_factors(dense, sparse, "c2", 3, 3, 3, {0.2f, 0.0f, -0.1f, 0.0f, 0.0f, 0.0f, 0.3f, 0.1f, 0.0f},
              {0.3f, 0.5f, 0.0f, 0.0f, 0.2f, -0.2f, 0.1f, 0.0f, 0.4f});
  set_factors(dense, sparse, "down", 1, 3, 3, {0.4f, 0.0f, -0.6f}, {0.3f, 0.0f, 0.5f});
  TaskSpec dense0 = dense, empty = sparse;
  empty.name = "empty";
  set_factors(dense0, empty, "down", 2, 3, 3, std::vector<float>(6, 0.0f),
              std::vector<float>(6, 0.0f));
  CHECK(empty.f.at("down.lora_a_values").second.empty() &&
        empty.u8.at("down.lora_b_mask") == std::vector<uint8_t>{0});
  {  // the paths taken: compacted low-rank factors, or their product at the centre tap
    spaedge::BaseModel base(f.base);
    spaedge::Task t(base, f.task("sparse.safetensors", sparse));
    CHECK(t.convs[0].rank() == 1 && t.convs[0].lowrank->a.size() == 2 && !t.convs[0].pointwise);
    CHECK(t.convs[1].rank() == 0 && !t.convs[1].lowrank && t.convs[1].pointwise->delta.size() == 9);
    CHECK(t.convs[2].rank() == 1 && t.convs[2].lowrank->b.size() == 3);
    CHECK(t.convs[0].sparse->factors && t.convs[1].sparse->factors);
    spaedge::Task e(base, f.task("empty.safetensors", empty));
    CHECK(e.convs[2].rank() == 0 && !e.convs[2].lowrank && !e.convs[2].pointwise &&
          e.convs[2].sparse->factors);
  }
  const std::vector<float> x = seq(2 * 2 * 5 * 4, 1.0f);
  for (const char* mode : {"merged", "lowrank"})
    for (int threads : {1, 2}) {
      Runtime rt(f.base, threads);
      rt.set_mode(mode);
      rt.load_task(f.task("sparse.safetensors", sparse));
      rt.load_task(f.task("empty.safetensors", empty));
      for (const auto& tc : {std::make_pair("sparse", &dense), std::make_pair("empty", &dense0)}) {
        rt.switch_to(tc.first);
        std::vector<float> y(6, -1.0f);
        rt.run(x.data(), 2, y.data());
        CHECK_MSG(
            close(y.data(), reference(f.m, *tc.second, x.data())) &&
                close(y.data() + 3, reference(f.m, *tc.second, x.data() + 40)),
            std::string(tc.first) + ", " + mode + ", " + std::to_string(threads) + " threads");
      }
    }
  // Pear shares dense factors only: a sparse target or source is refused, naming the entry.
  Runtime rt(f.base, 1);
  for (const auto& entry :
       {std::make_pair(std::string("{\"c1\":\"down\"}"), std::string("the target has its own")),
        std::make_pair(std::string("{\"down\":\"c1\"}"), std::string("has sparse factors"))}) {
    TaskSpec t = tiny_task();
    sparse_c1(t);
    std::vector<tb::Tensor> ts;
    for (const auto& kv : t.idx) ts.push_back(tb::i32(kv.first, kv.second));
    for (const auto& kv : t.f) ts.push_back(tb::f32(kv.first, kv.second.first, kv.second.second));
    for (const auto& kv : t.u8) ts.push_back(tb::u8(kv.first, kv.second));
    tb::Meta m = task_meta(t, f.base_hash);
    m.push_back({"shared_adapters", entry.first});
    const std::string p = f.dir.file("sparse_shared.safetensors");
    tb::write_file(p, tb::bundle(ts, m));
    EXPECT_ERROR(rt.load_task(p), p, "metadata 'shared_adapters': entry", entry.second);
  }
}

void expect_task_error(const Files& f, const std::string& file,
                       const std::function<void(TaskSpec&)>& edit, std::vector<std::string> needles,
                       int line);

// A sparse update (SparseAdapter on SPPaRA, or full-kernel): sparse_delta_values
// at the set bits of sparse_delta_mask over c1's [3, 2, 3, 3] task weight (54
// entries: 7 mask bytes, 2 padding bits) runs as the same entries as a dense
// weight_delta; an all-zero mask with no values is no update; a damaged mask
// is refused naming the tensor.
void test_sparse_delta(const Files& f) {
  std::vector<float> d(54, 0.0f);
  for (const auto& e :
       {std::make_pair(0, 0.3f), std::make_pair(4, -0.5f), std::make_pair(13, 0.2f),
        std::make_pair(31, 0.7f), std::make_pair(53, -0.4f)})  // centre and other taps, the last
    d[size_t(e.first)] = e.second;
  TaskSpec dense = tiny_task(), sparse = tiny_task(), none = tiny_task();
  sparse.name = "sparse";
  none.name = "none";
  dense.f["c1.weight_delta"] = {{3, 2, 3, 3}, d};
  set_sparse(sparse, "c1.sparse_delta", d);
  set_sparse(none, "c1.sparse_delta", std::vector<float>(54, 0.0f));
  CHECK(sparse.u8.at("c1.sparse_delta_mask") ==
        (std::vector<uint8_t>{0x11, 0x20, 0, 0x80, 0, 0, 0x20}));
  CHECK(none.f.at("c1.sparse_delta_values").second.empty() &&
        none.u8.at("c1.sparse_delta_mask").size() == 7);
  const std::vector<float> x = seq(2 * 2 * 5 * 4, 1.0f);
  TaskSpec plain = tiny_task();
  for (const char* mode : {"merged", "lowrank"}) {
    Runtime rt(f.base, 2);
    rt.set_mode(mode);
    rt.load_task(f.task("sd_sparse.safetensors", sparse));
    rt.load_task(f.task("sd_none.safetensors", none));
    for (const auto& tc : {std::make_pair("sparse", &dense), std::make_pair("none", &plain)}) {
      rt.switch_to(tc.first);
      std::vector<float> y(6, -1.0f);
      rt.run(x.data(), 2, y.data());
      CHECK_MSG(close(y.data(), reference(f.m, *tc.second, x.data())) &&
                    close(y.data() + 3, reference(f.m, *tc.second, x.data() + 40)),
                std::string(tc.first) + ", " + mode);
    }
  }
  using B = std::vector<uint8_t>;
  auto with = [&d](const std::function<void(TaskSpec&)>& edit) {
    return [&d, edit](TaskSpec& t) {
      set_sparse(t, "c1.sparse_delta", d);
      edit(t);
    };
  };
  expect_task_error(f, "sd_len.safetensors",
                    with([](TaskSpec& t) { t.u8["c1.sparse_delta_mask"].push_back(0); }),
                    {"tensor 'c1.sparse_delta_mask': shape [8], expected [7] (one bit per entry of "
                     "the [3, 2, 3, 3] "
                     "task weight, 54 entries, in bytes rounded up)"},
                    __LINE__);
  expect_task_error(
      f, "sd_pad.safetensors", with([](TaskSpec& t) { t.u8["c1.sparse_delta_mask"][6] |= 0x40; }),
      {"tensor 'c1.sparse_delta_mask': padding bits after position 53 are set (last byte 96): they "
       "must be zero"},
      __LINE__);
  expect_task_error(
      f, "sd_count.safetensors", with([](TaskSpec& t) { t.u8["c1.sparse_delta_mask"][2] = 1; }),
      {"tensor 'c1.sparse_delta_mask': has 6 set bits but 'c1.sparse_delta_values' has 5 values"},
      __LINE__);
  expect_task_error(
      f, "sd_nomask.safetensors", with([](TaskSpec& t) { t.u8.erase("c1.sparse_delta_mask"); }),
      {"missing tensor 'c1.sparse_delta_mask' (present iff 'c1.sparse_delta_values' is)"},
      __LINE__);
  expect_task_error(
      f, "sd_novalues.safetensors", with([](TaskSpec& t) { t.f.erase("c1.sparse_delta_values"); }),
      {"missing tensor 'c1.sparse_delta_values' (present iff 'c1.sparse_delta_mask' is)"},
      __LINE__);
  expect_task_error(f, "sd_values2d.safetensors",
                    with([](TaskSpec& t) { t.f["c1.sparse_delta_values"].first = {5, 1}; }),
                    {"tensor 'c1.sparse_delta_values': shape [5, 1], expected [nnz]"}, __LINE__);
  expect_task_error(f, "sd_dtype.safetensors", with([](TaskSpec& t) {
                      t.u8.erase("c1.sparse_delta_mask");
                      t.f["c1.sparse_delta_mask"] = {{7}, std::vector<float>(7, 0.0f)};
                    }),
                    {"tensor 'c1.sparse_delta_mask': dtype is F32, expected U8"}, __LINE__);
  expect_task_error(f, "sd_index.safetensors", with([](TaskSpec& t) {
                      t.u8.erase("c1.sparse_delta_mask");
                      t.idx["c1.sparse_delta_index"] = {0, 4, 13, 31, 53};
                    }),
                    {"tensor 'c1.sparse_delta_index': sparse positions are stored as U8 bitmasks "
                     "('c1.sparse_delta_mask'), no longer as I32 indices: repack the bundle"},
                    __LINE__);
}

void test_switching(const Files& f, int threads = 1, const char* mode = "merged") {
  Runtime rt(f.base, threads);
  rt.set_mode(mode);
  TaskSpec ta = tiny_task(0.0f), tb_ = tiny_task(0.37f);
  tb_.name = "other";
  tb_.h = 7;
  tb_.w = 9;
  tb_.classes = 2;
  tb_.f["fc.weight"] = {{2, 2}, seq(4, 0.5f, 0.1f)};
  tb_.f["fc.bias"] = {{2}, seq(2, 0.1f)};
  tb_.idx["c1.out_index"] = {1, 3};
  tb_.idx["c2.in_index"] = {1, 3};
  tb_.idx["c2.out_index"] = {1, 3};
  tb_.idx["down.in_index"] = {1, 3};
  tb_.idx["down.out_index"] = {1, 3};
  tb_.f["c1.lora_b"] = {{2, 1}, seq(2, 0.7f)};
  tb_.f["c2.weight_delta"] = {{2, 2, 3, 3}, seq(36, 0.05f)};
  tb_.f["c2.lora_a"] = {{2, 2}, seq(4, 0.2f)};
  tb_.f["c2.lora_b"] = {{2, 2}, seq(4, 0.3f)};
  tb_.f["down.bias"] = {{2}, seq(2, 0.1f)};
  for (const char* bn : {"b1", "b2"})
    for (const char* k : {".weight", ".bias", ".running_mean", ".running_var"})
      tb_.f[std::string(bn) + k] = {{2},
                                    seq(2, 0.1f, std::string(k) == ".running_var" ? 1.0f : 0.5f)};
  rt.load_task(f.task("a.safetensors", ta));
  rt.load_task(f.task("b.safetensors", tb_));
  CHECK(rt.active_task() == "other");
  CHECK((rt.tasks() == std::vector<std::string>{"tiny", "other"}));
  std::vector<float> xa = seq(2 * 5 * 4, 1.0f), xb = seq(2 * 7 * 9, 0.8f, 0.1f);
  std::vector<double> ra = reference(f.m, ta, xa.data()), rb = reference(f.m, tb_, xb.data());
  std::vector<float> y(3);
  for (int i = 0; i < 3; ++i) {
    rt.run(xb.data(), 1, y.data());
    CHECK(close(y.data(), rb));
    double ms = rt.switch_to("tiny");
    CHECK(ms >= 0.0 && ms < 10000.0);
    rt.run(xa.data(), 1, y.data());
    CHECK(close(y.data(), ra));
    rt.switch_to("other");
  }
  EXPECT_ERROR(rt.switch_to("zzz"), "no task named 'zzz' is loaded (loaded: tiny, other)");
  EXPECT_ERROR(rt.task_info("zzz"), "no task named 'zzz'");
  // A failed load leaves the active task alone.
  TaskSpec bad = tiny_task();
  bad.idx["c1.out_index"] = {0, 2, 9};
  EXPECT_ERROR(rt.load_task(f.task("bad.safetensors", bad)), "index 9 out of range");
  CHECK(rt.active_task() == "other" && rt.tasks().size() == 2);
  rt.run(xb.data(), 1, y.data());
  CHECK(close(y.data(), rb));
  rt.unload_task("other");
  CHECK(rt.active_task().empty() && rt.tasks() == std::vector<std::string>{"tiny"});
  EXPECT_ERROR(rt.run(xa.data(), 1, y.data()), "no active task");
  rt.switch_to("tiny");
  rt.run(xa.data(), 1, y.data());
  CHECK(close(y.data(), ra));

  // Concurrent callers are serialised: a runner and a switcher on one Runtime.
  TaskSpec tc = tiny_task(0.9f);
  tc.name = "third";
  rt.load_task(f.task("c.safetensors", tc));
  std::vector<double> rc = reference(f.m, tc, xa.data());
  int bad_results = 0, errors = 0;
  std::thread runner([&] {
    std::vector<float> out(3);
    for (int i = 0; i < 300; ++i) {
      try {
        rt.run(xa.data(), xa.size(), 1, out.data(), out.size());
        if (!close(out.data(), ra) && !close(out.data(), rc)) ++bad_results;
      } catch (const spaedge::Error&) {
        ++errors;
      }
    }
  });
  std::thread switcher([&] {
    for (int i = 0; i < 100; ++i) rt.switch_to(i % 2 ? "tiny" : "third");
  });
  runner.join();
  switcher.join();
  CHECK(bad_results == 0 && errors == 0);
}

// Writes a task with one edit and expects load_task to fail naming `needles`.
void expect_task_error(const Files& f, const std::string& file,
                       const std::function<void(TaskSpec&)>& edit, std::vector<std::string> needles,
                       int line) {
  TaskSpec t = tiny_task();
  edit(t);
  const std::string p = f.task(file, t);
  Runtime rt(f.base, 1);
  needles.insert(needles.begin(), p + ": ");
  tcheck::expect_error([&] { rt.load_task(p); }, needles, __FILE__, line);
  CHECK(rt.tasks().empty() && rt.active_task().empty());
}

void test_task_errors(const Files& f) {
  using V = std::vector<int32_t>;
  expect_task_error(
      f, "digits.safetensors", [](TaskSpec& t) { t.idx["c1.out_index"] = V{0, 2, 70}; },
      {"digits.safetensors: tensor 'c1.out_index': index 70 out of range for 4 output channels"},
      __LINE__);
  expect_task_error(
      f, "neg.safetensors", [](TaskSpec& t) { t.idx["c1.in_index"] = V{-1, 1}; },
      {"tensor 'c1.in_index': index -1 out of range for 2 input channels"}, __LINE__);
  expect_task_error(
      f, "order.safetensors", [](TaskSpec& t) { t.idx["c1.out_index"] = V{0, 3, 2}; },
      {"tensor 'c1.out_index': not strictly increasing: element 2 is 2 after 3"}, __LINE__);
  expect_task_error(
      f, "dup.safetensors", [](TaskSpec& t) { t.idx["c1.out_index"] = V{0, 2, 2}; },
      {"tensor 'c1.out_index': not strictly increasing"}, __LINE__);
  expect_task_error(
      f, "none.safetensors", [](TaskSpec& t) { t.idx["c1.out_index"] = V{}; },
      {"tensor 'c1.out_index': keeps no channels"}, __LINE__);
  expect_task_error(
      f, "many.safetensors", [](TaskSpec& t) { t.idx["c1.in_index"] = V{0, 1, 2}; },
      {"tensor 'c1.in_index': keeps 3 channels but the conv has 2 input channels"}, __LINE__);
  expect_task_error(
      f, "missing.safetensors", [](TaskSpec& t) { t.f.erase("b2.running_mean"); },
      {"missing tensor 'b2.running_mean'"}, __LINE__);
  expect_task_error(
      f, "missing_idx.safetensors", [](TaskSpec& t) { t.idx.erase("down.in_index"); },
      {"missing tensor 'down.in_index'"}, __LINE__);
  expect_task_error(
      f, "in_mismatch.safetensors", [](TaskSpec& t) { t.idx["c2.in_index"] = V{0, 1, 3}; },
      {"tensor 'c2.in_index': element 1 is 1 but its input 'r1' keeps channel 2", "'c1.out_index'"},
      __LINE__);
  expect_task_error(
      f, "in_len.safetensors", [](TaskSpec& t) { t.idx["c2.in_index"] = V{0, 2}; },
      {"tensor 'c2.in_index': keeps 2 channels but its input 'r1' keeps 3"}, __LINE__);
  expect_task_error(
      f, "add.safetensors", [](TaskSpec& t) { t.idx["down.out_index"] = V{0, 1, 3}; },
      {"tensor 'c2.out_index': kept channels differ between the inputs of add 'a'",
       "'down.out_index'"},
      __LINE__);
  expect_task_error(
      f, "unknown.safetensors", [](TaskSpec& t) { t.f["c1.lora_c"] = {{1}, {1.0f}}; },
      {"tensor 'c1.lora_c': unknown tensor"}, __LINE__);
  expect_task_error(
      f, "lora_half.safetensors", [](TaskSpec& t) { t.f.erase("c1.lora_b"); },
      {"missing tensor 'c1.lora_b' (present iff 'c1.lora_a' is)"}, __LINE__);
  expect_task_error(
      f, "lora_shape.safetensors", [](TaskSpec& t) { t.f["c1.lora_a"] = {{1, 3}, seq(3, 1)}; },
      {"tensor 'c1.lora_a': shape [1, 3], expected [r, 2]"}, __LINE__);
  expect_task_error(
      f, "lora_rank.safetensors", [](TaskSpec& t) { t.f["c1.lora_b"] = {{3, 2}, seq(6, 1)}; },
      {"tensor 'c1.lora_b': shape [3, 2], expected [3, 1]"}, __LINE__);
  // Sparse factors: malformed ones are refused naming the tensor.
  using B = std::vector<uint8_t>;
  expect_task_error(
      f, "sp_masklen.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_a_mask"] = B{3, 0};
      },
      {"tensor 'c1.lora_a_mask': shape [2], expected [1] (one bit per entry of the [1, 2] factor "
       "A, "
       "2 entries, in bytes rounded up)"},
      __LINE__);
  expect_task_error(
      f, "sp_maskempty.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_b_mask"] = B{};
      },
      {"tensor 'c1.lora_b_mask': shape [0], expected [1]"}, __LINE__);
  expect_task_error(
      f, "sp_pad.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_a_mask"] = B{0x06};
      },
      {"tensor 'c1.lora_a_mask': padding bits after position 1 are set (last byte 6): they must be "
       "zero"},
      __LINE__);
  expect_task_error(
      f, "sp_padhigh.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_b_mask"] = B{0x87};
      },
      {"tensor 'c1.lora_b_mask': padding bits after position 2 are set (last byte 135)"}, __LINE__);
  expect_task_error(
      f, "sp_count.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_a_mask"] = B{1};
      },
      {"tensor 'c1.lora_a_mask': has 1 set bits but 'c1.lora_a_values' has 2 values (one value per "
       "set bit)"},
      __LINE__);
  expect_task_error(
      f, "sp_count2.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8["c1.lora_b_mask"] = B{3};
      },
      {"tensor 'c1.lora_b_mask': has 2 set bits but 'c1.lora_b_values' has 3 values"}, __LINE__);
  expect_task_error(
      f, "sp_partner.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8.erase("c1.lora_b_mask");
      },
      {"missing tensor 'c1.lora_b_mask' (present iff 'c1.lora_b_values' is)"}, __LINE__);
  expect_task_error(
      f, "sp_partner2.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.f.erase("c1.lora_a_values");
      },
      {"missing tensor 'c1.lora_a_values' (present iff 'c1.lora_a_mask' is)"}, __LINE__);
  expect_task_error(
      f, "sp_factor.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8.erase("c1.lora_b_mask");
        t.f.erase("c1.lora_b_values");
      },
      {"missing tensor 'c1.lora_b_values' (sparse factors: lora_rank, lora_a_values/_mask and "
       "lora_b_values/_mask come together)"},
      __LINE__);
  // The I32 positions the masks replaced: refused naming the tensor, as is
  // a mask of another dtype.
  expect_task_error(
      f, "sp_index.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8.erase("c1.lora_b_mask");
        t.idx["c1.lora_b_index"] = {0, 1, 2};
      },
      {"tensor 'c1.lora_b_index': sparse positions are stored as U8 bitmasks ('c1.lora_b_mask'), "
       "no "
       "longer as I32 indices: repack the bundle"},
      __LINE__);
  expect_task_error(
      f, "sp_index2.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.idx["c1.lora_a_index"] = {0, 1};  // beside a valid mask too
      },
      {"tensor 'c1.lora_a_index': sparse positions are stored as U8 bitmasks"}, __LINE__);
  expect_task_error(
      f, "sp_dtype.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.u8.erase("c1.lora_a_mask");
        t.idx["c1.lora_a_mask"] = {3};
      },
      {"tensor 'c1.lora_a_mask': dtype is I32, expected U8"}, __LINE__);
  expect_task_error(
      f, "sp_norank.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.idx.erase("c1.lora_rank");
      },
      {"missing tensor 'c1.lora_rank' (sparse factors"}, __LINE__);
  expect_task_error(
      f, "sp_rank0.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.idx["c1.lora_rank"] = V{0};
      },
      {"tensor 'c1.lora_rank': rank 0 must be in [1, 65536]"}, __LINE__);
  expect_task_error(
      f, "sp_rankbig.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.idx["c1.lora_rank"] = V{65537};
      },
      {"tensor 'c1.lora_rank': rank 65537 must be in [1, 65536]"}, __LINE__);
  expect_task_error(
      f, "sp_rankshape.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.idx["c1.lora_rank"] = V{1, 1};
      },
      {"tensor 'c1.lora_rank': shape [2], expected [1]"}, __LINE__);
  expect_task_error(
      f, "sp_values2d.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.f["c1.lora_a_values"] = {{1, 2}, seq(2, 1)};
      },
      {"tensor 'c1.lora_a_values': shape [1, 2], expected [nnz]"}, __LINE__);
  expect_task_error(
      f, "sp_nan.safetensors",
      [](TaskSpec& t) {
        sparse_c1(t);
        t.f["c1.lora_b_values"] = {{3}, {1.0f, std::nanf(""), 1.0f}};
      },
      {"tensor 'c1.lora_b_values': element 1 is not finite"}, __LINE__);
  expect_task_error(
      f, "sp_both.safetensors",
      [](TaskSpec& t) {
        TaskSpec d = t;
        sparse_c1(t);
        t.f["c1.lora_a"] = d.f.at("c1.lora_a");
        t.f["c1.lora_b"] = d.f.at("c1.lora_b");
      },
      {"tensor 'c1.lora_a_values': conv 'c1' also has dense lora_a/lora_b"}, __LINE__);
  expect_task_error(
      f, "delta.safetensors",
      [](TaskSpec& t) { t.f["c2.weight_delta"] = {{3, 3, 1, 1}, seq(9, 1)}; },
      {"tensor 'c2.weight_delta': shape [3, 3, 1, 1], expected [3, 3, 3, 3]"}, __LINE__);
  expect_task_error(
      f, "dtype.safetensors",
      [](TaskSpec& t) {
        t.idx.erase("c1.out_index");
        t.f["c1.out_index"] = {{3}, {0, 2, 3}};
      },
      {"tensor 'c1.out_index': dtype is F32, expected I32"}, __LINE__);
  expect_task_error(
      f, "head.safetensors", [](TaskSpec& t) { t.f["fc.weight"] = {{3, 4}, seq(12, 1)}; },
      {"tensor 'fc.weight': shape [3, 4], expected [classes, 3]"}, __LINE__);
  expect_task_error(
      f, "headbias.safetensors", [](TaskSpec& t) { t.f["fc.bias"] = {{4}, seq(4, 1)}; },
      {"tensor 'fc.bias': shape [4], expected [3]"}, __LINE__);
  expect_task_error(
      f, "labels.safetensors", [](TaskSpec& t) { t.classes = 4; },
      {"metadata 'labels' has 4 labels but the output 'fc' has 3 classes"}, __LINE__);
  expect_task_error(
      f, "var.safetensors", [](TaskSpec& t) { t.f["b1.running_var"] = {{3}, {1.0f, -2.0f, 1.0f}}; },
      {"tensor 'b1.running_var': element 1 plus eps is not positive"}, __LINE__);
  expect_task_error(
      f, "nan.safetensors",
      [](TaskSpec& t) { t.f["b1.weight"] = {{3}, {1.0f, std::nanf(""), 1.0f}}; },
      {"tensor 'b1.weight': element 1 is not finite"}, __LINE__);
  expect_task_error(
      f, "bn_shape.safetensors", [](TaskSpec& t) { t.f["b2.bias"] = {{4}, seq(4, 1)}; },
      {"tensor 'b2.bias': shape [4], expected [3]"}, __LINE__);
  expect_task_error(
      f, "size.safetensors", [](TaskSpec& t) { t.h = 0; },
      {"metadata 'input': field 'height' must be an integer in [1, 4096]"}, __LINE__);
  // Input sizes are bounded before anything is allocated (docs/runtime.md).
  expect_task_error(
      f, "huge.safetensors", [](TaskSpec& t) { t.h = t.w = 8192; },
      {"metadata 'input': field 'height' must be an integer in [1, 4096]"}, __LINE__);
  expect_task_error(
      f, "wide.safetensors", [](TaskSpec& t) { t.w = 4097; },
      {"metadata 'input': field 'width' must be an integer in [1, 4096]"}, __LINE__);

  // Metadata-level problems, written directly.
  Runtime rt(f.base, 1);
  auto meta_case = [&](const std::string& file, const std::function<void(tb::Meta&)>& edit,
                       const std::vector<std::string>& needles, int line) {
    TaskSpec t = tiny_task();
    std::vector<tb::Tensor> ts;
    for (const auto& kv : t.idx) ts.push_back(tb::i32(kv.first, kv.second));
    for (const auto& kv : t.f) ts.push_back(tb::f32(kv.first, kv.second.first, kv.second.second));
    for (const auto& kv : t.u8) ts.push_back(tb::u8(kv.first, kv.second));
    tb::Meta m = task_meta(t, f.base_hash);
    edit(m);
    const std::string p = f.dir.file(file);
    tb::write_file(p, tb::bundle(ts, m));
    std::vector<std::string> n = needles;
    n.insert(n.begin(), p);
    tcheck::expect_error([&] { rt.load_task(p); }, n, __FILE__, line);
  };
  auto set = [](tb::Meta& m, const std::string& k, const std::string& v) {
    for (auto& kv : m)
      if (kv.first == k) kv.second = v;
  };
  auto drop = [](tb::Meta& m, const std::string& k) {
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i].first == k) m.erase(m.begin() + long(i));
  };
  const std::string other(64, 'a');
  meta_case(
      "wrongbase.safetensors", [&](tb::Meta& m) { set(m, "base_hash", other); },
      {"task bundle " + f.dir.file("wrongbase.safetensors") + " was made for base " + other +
       ", but the loaded base is " + f.base_hash +
       ": pack the task against this base or load the right base"},
      __LINE__);
  meta_case(
      "nobase.safetensors", [&](tb::Meta& m) { drop(m, "base_hash"); },
      {"missing metadata key 'base_hash'"}, __LINE__);
  meta_case(
      "notask.safetensors", [&](tb::Meta& m) { drop(m, "task"); }, {"missing metadata key 'task'"},
      __LINE__);
  meta_case(
      "nolabels.safetensors", [&](tb::Meta& m) { drop(m, "labels"); },
      {"missing metadata key 'labels'"}, __LINE__);
  meta_case(
      "nomethod.safetensors", [&](tb::Meta& m) { drop(m, "method"); },
      {"missing metadata key 'method'"}, __LINE__);
  meta_case(
      "badlabels.safetensors", [&](tb::Meta& m) { set(m, "labels", "[\"a\", 3]"); },
      {"metadata 'labels' must be a non-empty JSON list of strings"}, __LINE__);
  meta_case(
      "badjson.safetensors", [&](tb::Meta& m) { set(m, "labels", "[\"a\""); },
      {"metadata 'labels': invalid JSON"}, __LINE__);
  meta_case(
      "channels.safetensors",
      [&](tb::Meta& m) {
        set(m, "input",
            "{\"channels\":3,\"height\":5,\"width\":4,\"mean\":[0,0,0],\"std\":[1,1,1]}");
      },
      {"metadata 'input': channels is 3 but the base takes 2 input channels"}, __LINE__);
  meta_case(
      "std.safetensors",
      [&](tb::Meta& m) {
        set(m, "input", "{\"channels\":2,\"height\":5,\"width\":4,\"mean\":[0,0],\"std\":[1,0]}");
      },
      {"metadata 'input': std[1] must be a positive finite number"}, __LINE__);
  meta_case(
      "meanlen.safetensors",
      [&](tb::Meta& m) {
        set(m, "input", "{\"channels\":2,\"height\":5,\"width\":4,\"mean\":[0],\"std\":[1,1]}");
      },
      {"metadata 'input': field 'mean' must be a list of 2 numbers"}, __LINE__);
  meta_case(
      "base_fmt.safetensors", [&](tb::Meta& m) { set(m, "format", "spaedge-base"); },
      {"is a spaedge-base bundle, expected a spaedge-task bundle"}, __LINE__);
  // Labels name the outputs: one per class, none empty, none twice.
  meta_case(
      "duplabels.safetensors", [&](tb::Meta& m) { set(m, "labels", "[\"c0\",\"7\",\"7\"]"); },
      {"metadata 'labels': label 2 '7' repeats label 1 (class names must be distinct)"}, __LINE__);
  meta_case(
      "emptylabel.safetensors", [&](tb::Meta& m) { set(m, "labels", "[\"c0\",\"\",\"c2\"]"); },
      {"metadata 'labels': label 1 is empty"}, __LINE__);
  meta_case(
      "ctrllabel.safetensors",
      [&](tb::Meta& m) { set(m, "labels", "[\"c0\",\"\\u001b[2J\",\"\\u001b[2J\"]"); },
      {"metadata 'labels': label 2 '\\x1b[2J' repeats label 1"}, __LINE__);
  meta_case(
      "nanstd.safetensors",
      [&](tb::Meta& m) {
        set(m, "input",
            "{\"channels\":2,\"height\":5,\"width\":4,\"mean\":[0,0],\"std\":[1,-0.5]}");
      },
      {"metadata 'input': std[1] must be a positive finite number"}, __LINE__);
  meta_case(
      "inf_std.safetensors",
      [&](tb::Meta& m) {
        set(m, "input",
            "{\"channels\":2,\"height\":5,\"width\":4,\"mean\":[0,0],\"std\":[1e39,1]}");
      },
      {"metadata 'input': std[0] must be a positive finite number"}, __LINE__);
  meta_case(
      "five.safetensors",
      [&](tb::Meta& m) {
        set(m, "input",
            "{\"channels\":5,\"height\":5,\"width\":4,\"mean\":[0,0,0,0,0],\"std\":[1,1,1,1,1]}");
      },
      {"metadata 'input': field 'channels' must be an integer in [1, 4]"}, __LINE__);
  meta_case(
      "info.safetensors", [&](tb::Meta& m) { set(m, "info", "[1]"); },
      {"metadata 'info' must be a JSON object"}, __LINE__);
  meta_case(
      "method.safetensors", [&](tb::Meta& m) { set(m, "method", ""); },
      {"metadata 'method' is empty"}, __LINE__);
  meta_case(
      "version1.safetensors", [&](tb::Meta& m) { m.emplace_back("version", "1"); },
      {"metadata 'version' is '1': format version 1 is no longer read", "repack"}, __LINE__);

  // Content hash: flip one data bit of a good task.
  std::vector<uint8_t> good = task_bytes(tiny_task(), f.base_hash);
  good[good.size() - 7] ^= 0x04;
  const std::string p = f.dir.file("flip.safetensors");
  tb::write_file(p, good);
  EXPECT_ERROR(rt.load_task(p), p + ": metadata 'content_hash' mismatch");
  EXPECT_ERROR(Runtime{p}, p + ": is a spaedge-task bundle, expected a spaedge-base bundle");
  CHECK(rt.tasks().empty());
}

void test_graph_errors(const Files& f) {
  auto base_case = [&](const std::string& file, const std::string& graph,
                       const std::vector<std::string>& needles, int line, Model m = tiny_base()) {
    const std::string p = f.dir.file(file);
    tb::write_file(p, base_bytes(m, graph));
    std::vector<std::string> n = needles;
    n.insert(n.begin(), p + ": ");
    tcheck::expect_error([&] { Runtime rt(p, 1); }, n, __FILE__, line);
  };
  auto nodes = tiny_nodes;
  {
    auto n = nodes();
    n[3] = conv_node("c2", "r2", 4, 4, 3, 2, 1);
    base_case("topo.safetensors", graph_json(n),
              {"metadata 'graph': node 'c2': input 'r2' is not the graph input or the output of an "
               "earlier node"},
              __LINE__);
  }
  {
    auto n = nodes();
    n[2] = simple_node("relu", "b1", q("b1"));
    base_case("dupname.safetensors", graph_json(n), {"node 'b1': duplicate node name"}, __LINE__);
  }
  {
    auto n = nodes();
    n[2] = "{\"name\":\"r1\",\"op\":\"relu\",\"inputs\":[\"b1\"],\"output\":\"c1\"}";
    base_case("dupout.safetensors", graph_json(n), {"node 'r1': output 'c1' is already defined"},
              __LINE__);
  }
  {
    auto n = nodes();
    n[4] = simple_node("batchnorm", "b2", q("r1"), ",\"eps\":0.001");
    n[6] = simple_node("add", "a", q("b2") + "," + q("down"));
    base_case("bn_after_relu.safetensors", graph_json(n),
              {"node 'b2': batchnorm input 'r1' is not the output of a conv"}, __LINE__);
  }
  {
    auto n = nodes();
    n[5] = conv_node("down", "c1", 4, 4, 1, 2, 0);
    base_case("bn_shared.safetensors", graph_json(n),
              {"node 'down': reads conv output 'c1' which also feeds"}, __LINE__);
  }
  {
    auto n = nodes();
    n[2] = simple_node("gelu", "r1", q("b1"));
    base_case("op.safetensors", graph_json(n), {"node 'r1': unknown op 'gelu'"}, __LINE__);
  }
  {
    auto n = nodes();
    n[0] = conv_node("c1", "x", 2, 4, 5, 1, 1);
    base_case("wshape.safetensors", graph_json(n),
              {"tensor 'c1.weight': shape [4, 2, 3, 3], expected [4, 2, 5, 5]"}, __LINE__);
  }
  {
    Model m = tiny_base();
    m.base.erase("down.weight");
    base_case("noweight.safetensors", graph_json(nodes()), {"missing tensor 'down.weight'"},
              __LINE__, m);
  }
  {
    Model m = tiny_base();
    m.base["extra"] = {1.0f};
    m.base_shape["extra"] = {1};
    base_case("extra.safetensors", graph_json(nodes()),
              {"tensor 'extra': not a conv weight or bias"}, __LINE__, m);
  }
  {
    Model m = tiny_base();
    m.base["c1.bias"] = {1.0f, 2.0f};
    m.base_shape["c1.bias"] = {2};
    base_case("bias.safetensors", graph_json(nodes()),
              {"tensor 'c1.bias': shape [2], expected [4]"}, __LINE__, m);
  }
  base_case("spatial_out.safetensors", graph_json(nodes(), "r2"),
            {"output 'r2' is a spatial tensor"}, __LINE__);
  base_case("noout.safetensors", graph_json(nodes(), "nope"), {"output 'nope' is not defined"},
            __LINE__);
  {
    auto n = nodes();
    n.push_back(simple_node("relu", "dead", q("fc")));
    base_case("dead.safetensors", graph_json(n), {"node 'dead': output 'dead' is never used"},
              __LINE__);
  }
  {
    auto n = nodes();
    n[3] = conv_node("c2", "r1", 3, 4, 3, 2, 1);
    base_case("inch.safetensors", graph_json(n),
              {"node 'c2': in_channels 3 but input 'r1' has 4 channels"}, __LINE__);
  }
  {
    auto n = nodes();
    n[0] =
        "{\"name\":\"c1\",\"op\":\"conv\",\"inputs\":[\"x\"],\"output\":\"c1\",\"stride\":1,"
        "\"padding\":1,"
        "\"in_channels\":2,\"out_channels\":4}";
    base_case("nokernel.safetensors", graph_json(n), {"node 'c1': missing field 'kernel'"},
              __LINE__);
  }
  {
    auto n = nodes();
    n[0] =
        "{\"name\":\"c1\",\"op\":\"conv\",\"inputs\":[\"x\"],\"output\":\"c1\",\"kernel\":3,"
        "\"stride\":1,"
        "\"padding\":1,\"in_channels\":2,\"out_channels\":4,\"groups\":2}";
    base_case("groups.safetensors", graph_json(n),
              {"node 'c1': field 'groups' must be an integer in [1, 1]"}, __LINE__);
  }
  {
    auto n = nodes();
    n.insert(n.begin() + 3,
             simple_node("maxpool", "mp", q("r1"), ",\"kernel\":3,\"stride\":1,\"padding\":2"));
    base_case("pool.safetensors", graph_json(n),
              {"node 'mp': field 'padding' must be an integer in [0, 1]"}, __LINE__);
  }
  {
    auto n = nodes();
    n[9] = simple_node("linear", "fc", q("r2"));
    n[8] = simple_node("gap", "g", q("r2"));
    base_case("linear_spatial.safetensors", graph_json(n),
              {"node 'fc': linear input 'r2' is a spatial tensor"}, __LINE__);
  }
  {
    auto n = nodes();
    n[6] = simple_node("add", "a", q("b2"));
    base_case("add1.safetensors", graph_json(n), {"node 'a': op 'add' takes 2 input(s), got 1"},
              __LINE__);
  }
  base_case("notjson.safetensors", "{\"input\":", {"metadata 'graph': invalid JSON"}, __LINE__);
  base_case("nochannels.safetensors", "{\"input\":\"x\",\"nodes\":[],\"output\":\"x\"}",
            {"missing field 'input_channels'"}, __LINE__);
  base_case("nonodes.safetensors",
            "{\"input\":\"x\",\"input_channels\":2,\"nodes\":[],\"output\":\"x\"}",
            {"field 'nodes' is empty"}, __LINE__);
  {
    // Base without 'graph' / 'model' keys.
    const std::string p = f.dir.file("nograph.safetensors");
    tb::write_file(
        p, tb::bundle(base_tensors(tiny_base()), {{"format", "spaedge-base"}, {"model", "tiny"}}));
    EXPECT_ERROR(Runtime{p}, p + ": missing metadata key 'graph'");
    tb::write_file(p, tb::bundle(base_tensors(tiny_base()), {{"format", "spaedge-base"},
                                                             {"graph", graph_json(tiny_nodes())}}));
    EXPECT_ERROR(Runtime{p}, p + ": missing metadata key 'model'");
  }
  EXPECT_ERROR(Runtime{f.dir.path.string()}, "is a directory");
  // Input too small for the network: conv with no padding on a tiny image.
  {
    auto n = tiny_nodes();
    n[0] = conv_node("c1", "x", 2, 4, 3, 1, 0);
    const std::string p = f.dir.file("nopad.safetensors");
    tb::write_file(p, base_bytes(tiny_base(), graph_json(n)));
    Runtime rt(p, 1);
    TaskSpec t = tiny_task();
    t.h = 2;
    const std::string tp = f.dir.file("small.safetensors");
    tb::write_file(tp, task_bytes(t, rt.base_hash()));
    EXPECT_ERROR(rt.load_task(tp),
                 tp + ": metadata 'input': 2x4 is too small: conv 'c1' gets 2x4 with kernel 3");
  }
}

// Mutation fuzzing: every mutated task bundle either loads (and then runs) or
// is refused with spaedge::Error; nothing else may happen (run under
// -DSPAEDGE_SANITIZE=ON to catch out-of-bounds reads too). Data mutations get
// a recomputed content hash so they reach the task validation, not just the hash.
void test_fuzz(const Files& f) {
  const std::vector<uint8_t> good = task_bytes(tiny_task(), f.base_hash);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | good[size_t(i)];
  const size_t data_start = 8 + size_t(n);
  const std::string old_hash =
      spaedge::Bundle(f.task("fuzz_good.safetensors", tiny_task())).content_hash();
  uint64_t state = 0x9E3779B97F4A7C15ull;
  auto rnd = [&](uint64_t mod) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return mod ? state % mod : 0;
  };
  Runtime rt(f.base, 1);
  TempDir shm("/dev/shm");  // rewriting one file 3000 times is slow on overlay filesystems
  const std::string p = shm.file("fuzz.safetensors");
  int loaded = 0, refused = 0, other = 0;
  std::vector<float> x(2 * 5 * 4, 0.25f), y(64);
  const char* digits = "0123456789-[]{},\":. e";
  int iters = 3000;
  if (const char* e = std::getenv("SPAEDGE_FUZZ_ITERS")) iters = std::max(100, std::atoi(e));
  for (int iter = 0; iter < iters; ++iter) {
    std::vector<uint8_t> b = good;
    const int kind = int(rnd(4));
    if (kind == 0) {  // header bytes
      for (int k = 0, m = 1 + int(rnd(3)); k < m; ++k) {
        size_t at = 8 + size_t(rnd(n));
        b[at] = rnd(2) ? uint8_t(digits[rnd(22)]) : uint8_t(rnd(256));
      }
    } else if (kind == 1) {  // data bytes, hash fixed up
      for (int k = 0, m = 1 + int(rnd(4)); k < m; ++k) {
        size_t at = data_start + size_t(rnd(b.size() - data_start));
        b[at] = rnd(2) ? uint8_t(b[at] ^ (1u << rnd(8))) : uint8_t(rnd(256));
      }
      // The canonical hash of the mutated file, as the reader computes it.
      tb::write_file(p, b);
      spaedge::BundleOptions unchecked;
      unchecked.verify_hash = false;
      const std::string h = spaedge::Bundle(p, "", unchecked).computed_hash();
      std::string hdr(b.begin() + 8, b.begin() + long(data_start));
      size_t pos = hdr.find(old_hash);
      if (pos != std::string::npos) std::copy(h.begin(), h.end(), b.begin() + 8 + long(pos));
    } else if (kind == 2) {  // truncation
      b.resize(size_t(rnd(b.size())));
    } else {  // length field
      b[size_t(rnd(8))] = uint8_t(rnd(256));
    }
    tb::write_file(p, b);
    try {
      rt.load_task(p);
      ++loaded;
      const spaedge::TaskInfo info = rt.task_info(rt.active_task());
      const size_t in_n = size_t(info.channels) * size_t(info.height) * size_t(info.width);
      if (in_n <= 4096 && size_t(info.classes) <= y.size()) {
        std::vector<float> xin(in_n, 0.1f);
        rt.run(xin.data(), 1, y.data());
      }
      rt.unload_task(rt.active_task());
    } catch (const spaedge::Error&) {
      ++refused;
    } catch (...) {
      ++other;
    }
  }
  CHECK_MSG(other == 0,
            std::to_string(other) + " mutations threw something other than spaedge::Error");
  CHECK(refused > iters / 2);
  CHECK(loaded + refused == iters);
  std::printf("fuzz: %d loaded, %d refused\n", loaded, refused);
}

// ---- files that change underneath --------------------------------------------------------
// The runtime reads each bundle into private memory, checks it there and never
// touches the file again: truncating or overwriting a loaded base or task (as
// `scp` onto the file does) changes neither a switch nor a run. A file that
// changes while it is being read is refused. Each event is made to happen at a
// fixed point (the file operation, then the call; or the testing hook inside
// the read), never by timing.
std::string g_hook_path;
void truncate_hook(const std::string& path) {
  if (path == g_hook_path) CHECK(truncate(path.c_str(), 20) == 0);
}

void overwrite_in_place(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* fp = std::fopen(path.c_str(), "r+b");  // no truncation: the same inode, rewritten
  CHECK(fp != nullptr);
  if (!fp) return;
  CHECK(std::fwrite(bytes.data(), 1, bytes.size(), fp) == bytes.size());
  std::fclose(fp);
}

void test_files_change_underneath(const Files& f) {
  const std::vector<uint8_t> base_good = base_bytes(f.m, graph_json(tiny_nodes()));
  Model m2 = tiny_base();
  for (auto& kv : m2.base)
    for (float& v : kv.second) v = -v * 1.5f;
  const std::vector<uint8_t> base_other = base_bytes(m2, graph_json(tiny_nodes()));
  CHECK(base_other.size() == base_good.size());
  TaskSpec t1 = tiny_task(), t2 = tiny_task(0.25f);
  t2.name = "second";
  std::vector<float> x = seq(2 * 2 * 5 * 4, 1.0f);
  for (const char* mode : {"merged", "lowrank"}) {
    for (int threads : {1, 2}) {
      const std::string base = f.dir.file("moving_base.safetensors");
      const std::string task1 = f.dir.file("moving_1.safetensors"),
                        task2 = f.dir.file("moving_2.safetensors");
      tb::write_file(base, base_good);
      tb::write_file(task1, task_bytes(t1, f.base_hash));
      tb::write_file(task2, task_bytes(t2, f.base_hash));
      Runtime rt(base, threads);
      rt.set_mode(mode);
      rt.load_task(task1);
      std::vector<float> want1(6), want2(6), y(6);
      rt.run(x.data(), 2, want1.data());
      CHECK(close(want1.data(), reference(f.m, t1, x.data())));
      rt.load_task(task2);
      rt.run(x.data(), 2, want2.data());
      // The base truncated to nothing, then switches: the checked copy is used.
      CHECK(truncate(base.c_str(), 0) == 0);
      rt.switch_to("tiny");
      rt.run(x.data(), 2, y.data());
      CHECK(y == want1);
      // Overwritten in place with another base of the same size.
      tb::write_file(base, base_good);
      overwrite_in_place(base, base_other);
      rt.switch_to("second");
      rt.run(x.data(), 2, y.data());
      CHECK(y == want2);
      rt.switch_to("tiny");
      rt.run(x.data(), 2, y.data());
      CHECK(y == want1);
      CHECK(rt.base_hash() == f.base_hash);
      // The task files truncated and overwritten after load: nothing changes.
      CHECK(truncate(task1.c_str(), 10) == 0);
      overwrite_in_place(task2, std::vector<uint8_t>(64, 0xff));
      rt.switch_to("second");
      rt.run(x.data(), 2, y.data());
      CHECK(y == want2);
      rt.switch_to("tiny");
      rt.run(x.data(), 2, y.data());
      CHECK(y == want1);
      // Truncated while load_task reads it: refused, the runtime as it was.
      const std::string task3 = f.dir.file("moving_3.safetensors");
      tb::write_file(task3, task_bytes(t2, f.base_hash));
      g_hook_path = task3;
      spaedge::testing::bundle_opened = truncate_hook;
      EXPECT_ERROR(rt.load_task(task3), task3 + ": file changed while being read: it was ",
                   " bytes when opened and is 20 now");
      spaedge::testing::bundle_opened = nullptr;
      CHECK(rt.active_task() == "tiny" && rt.tasks().size() == 2);
      rt.run(x.data(), 2, y.data());
      CHECK(y == want1);
      // A base truncated while the Runtime reads it: refused.
      tb::write_file(base, base_good);
      g_hook_path = base;
      spaedge::testing::bundle_opened = truncate_hook;
      EXPECT_ERROR(Runtime(base, threads), base + ": file changed while being read");
      spaedge::testing::bundle_opened = nullptr;
      // The other base now on disk is another base: the old tasks do not fit it.
      tb::write_file(base, base_other);
      Runtime fresh(base, threads);
      CHECK(fresh.base_hash() != f.base_hash);
      tb::write_file(task1, task_bytes(t1, f.base_hash));
      EXPECT_ERROR(fresh.load_task(task1), "was made for base " + f.base_hash);
    }
  }
}

// inspect_bundle (spaedge info): the same rules, header only.
void test_inspect(const Files& f) {
  spaedge::BundleSummary b = spaedge::inspect_bundle(f.base);
  CHECK(b.format == "spaedge-base" && b.version == "3" && b.hash_verified &&
        b.content_hash == f.base_hash);
  CHECK(b.model == "tiny" && b.input_channels == 2 && b.nodes == 10 && b.convs == 3 &&
        b.tensors.size() == 4);
  CHECK(b.metadata.count("graph") == 1 && b.file_bytes > b.header_bytes);
  const std::string tp = f.task("inspect_task.safetensors", tiny_task());
  spaedge::BundleSummary t = spaedge::inspect_bundle(tp);
  CHECK(t.format == "spaedge-task" && t.task == "tiny" && t.method == "splora" &&
        t.base_hash == f.base_hash);
  CHECK(t.labels == std::vector<std::string>({"c0", "c1", "c2"}) && t.channels == 2 &&
        t.height == 5 && t.width == 4 && t.std[1] == 0.3f && t.info == "{}");
  spaedge::BundleSummary quick = spaedge::inspect_bundle(tp, false);
  CHECK(!quick.hash_verified && quick.task == "tiny");
  // What loading refuses, inspecting refuses, naming the file and the field.
  TaskSpec dup = tiny_task();
  std::vector<uint8_t> bytes = task_bytes(dup, f.base_hash);
  std::string text(bytes.begin(), bytes.end());
  const size_t at = text.find("[\\\"c0\\\",\\\"c1\\\",\\\"c2\\\"]");
  CHECK(at != std::string::npos);
  if (at != std::string::npos) {
    bytes[at + 11] = '0';  // "c1" -> "c0": same length, a duplicate label, a stale hash
    const std::string p = f.dir.file("inspect_dup.safetensors");
    tb::write_file(p, bytes);
    // The header is checked before the data is streamed through the hash.
    EXPECT_ERROR(spaedge::inspect_bundle(p),
                 p + ": metadata 'labels': label 1 'c0' repeats label 0");
    EXPECT_ERROR(spaedge::inspect_bundle(p, false),
                 p + ": metadata 'labels': label 1 'c0' repeats label 0");
    Runtime rt(f.base, 1);
    EXPECT_ERROR(rt.load_task(p), p + ": metadata 'content_hash' mismatch");
  }
  std::vector<uint8_t> flipped = task_bytes(tiny_task(), f.base_hash);
  flipped[flipped.size() - 5] ^= 0x10;
  const std::string fp = f.dir.file("inspect_flip.safetensors");
  tb::write_file(fp, flipped);
  EXPECT_ERROR(spaedge::inspect_bundle(fp), fp + ": metadata 'content_hash' mismatch");
  CHECK(!spaedge::inspect_bundle(fp, false).hash_verified);
  TempDir d;
  const std::string fifo = d.file("fifo");
  if (mkfifo(fifo.c_str(), 0600) == 0)
    EXPECT_ERROR(spaedge::inspect_bundle(fifo), fifo + ": is not a regular file");
  EXPECT_ERROR(spaedge::inspect_bundle("/dev/zero"), "/dev/zero: is not a regular file");
}

}  // namespace

// Workers: every item exactly once, per-worker ids below the thread count,
// helpers that start late (or never) still leave a complete result.
void test_workers() {
  spaedge::Workers pool;
  for (int round = 0; round < 200; ++round) {
    const int n = round % 37, threads = 1 + round % 4;
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n) + 1);
    std::vector<std::atomic<int>> busy(static_cast<size_t>(threads));
    std::atomic<bool> ok{true};
    pool.run(n, threads, [&](int i, int w) {
      if (i < 0 || i >= n || w < 0 || w >= threads) {
        ok = false;
        return;
      }
      if (busy[size_t(w)].fetch_add(1) != 0) ok = false;  // one item per worker id at a time
      if (round % 5 == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
      hits[size_t(i)].fetch_add(1);
      busy[size_t(w)].fetch_sub(1);
    });
    for (int i = 0; i < n; ++i) ok = ok && hits[size_t(i)].load() == 1;
    CHECK(ok.load());
  }
}

int main() {
  Files f;
  test_numerics(f);
  test_switching(f);
  // Task application split over the caller and helper threads, both modes
  // (c2 of the second task takes the general path, the other convs one pass).
  test_switching(f, 2);
  test_switching(f, 3, "lowrank");
  test_workers();
  test_task_errors(f);
  test_sparse_factors(f);
  test_sparse_delta(f);
  test_graph_errors(f);
  test_files_change_underneath(f);
  test_inspect(f);
  test_fuzz(f);
  return tcheck::summary("test_runtime");
}
