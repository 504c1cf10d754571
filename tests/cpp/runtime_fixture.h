// The runtime tests' shared part (tests/cpp/test_runtime_*.cpp): a tiny base
// and task written with test_bundle_writer.h, a double-precision reference of
// the network over NCHW, the fixture files, and a helper expecting a task to
// be refused.
#pragma once

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

// ---- shared adapters (Pear) --------------------------------------------------------------
// A shared adapter in base coordinates: a [r, I] and b [O, r] (row-major).
struct SharedAdapter {
  int64_t r, O, I;
  std::vector<float> a, b;
};

// `t` plus model-level tensors shared.<name>.a/.b and metadata 'shared_adapters' `entries`
// (a JSON object), written to `file`.
std::string shared_task(const Files& f, const std::string& file, const TaskSpec& t,
                        const std::map<std::string, SharedAdapter>& adapters,
                        const std::string& entries) {
  std::vector<tb::Tensor> ts;
  for (const auto& kv : t.idx) ts.push_back(tb::i32(kv.first, kv.second));
  for (const auto& kv : t.f) ts.push_back(tb::f32(kv.first, kv.second.first, kv.second.second));
  for (const auto& kv : t.u8) ts.push_back(tb::u8(kv.first, kv.second));
  for (const auto& kv : adapters) {
    ts.push_back(tb::f32("shared." + kv.first + ".a", {kv.second.r, kv.second.I}, kv.second.a));
    ts.push_back(tb::f32("shared." + kv.first + ".b", {kv.second.O, kv.second.r}, kv.second.b));
  }
  tb::Meta m = task_meta(t, f.base_hash);
  for (auto& e : m)
    if (e.first == "method") e.second = "pear";
  m.push_back({"shared_adapters", entries});
  const std::string p = f.dir.file(file);
  tb::write_file(p, tb::bundle(ts, m));
  return p;
}

// The dense factors conv L gathers from `s`: a[:, in_index] and b[out_index], set in `t`.
void gather_into(TaskSpec& t, const std::string& L, const SharedAdapter& s) {
  const auto& oi = t.idx.at(L + ".out_index");
  const auto& ii = t.idx.at(L + ".in_index");
  std::vector<float> a, b;
  for (int64_t k = 0; k < s.r; ++k)
    for (int32_t i : ii) a.push_back(s.a[size_t(k * s.I + i)]);
  for (int32_t o : oi)
    for (int64_t k = 0; k < s.r; ++k) b.push_back(s.b[size_t(o * s.r + k)]);
  t.f[L + ".lora_a"] = {{s.r, int64_t(ii.size())}, a};
  t.f[L + ".lora_b"] = {{int64_t(oi.size()), s.r}, b};
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

}  // namespace
