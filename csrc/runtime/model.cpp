// Base bundle: graph parsing and validation.
#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>

#include "runtime/json.h"

namespace spaedge {

const char* op_name(Op op) {
  switch (op) {
    case Op::Conv:
      return "conv";
    case Op::BatchNorm:
      return "batchnorm";
    case Op::Relu:
      return "relu";
    case Op::Add:
      return "add";
    case Op::MaxPool:
      return "maxpool";
    case Op::Gap:
      return "gap";
    case Op::Linear:
      return "linear";
  }
  return "?";
}

namespace {

struct GraphParser {
  const Bundle& b;

  [[noreturn]] void fail(const std::string& msg) const { b.fail("metadata 'graph': " + msg); }
  [[noreturn]] void fail_node(size_t idx, const std::string& name, const std::string& msg) const {
    if (name.empty()) fail("node #" + std::to_string(idx) + ": " + msg);
    fail("node '" + name + "': " + msg);
  }

  const std::string& str_field(const json::Value& obj, const char* key, size_t idx,
                               const std::string& name) const {
    const json::Value* v = obj.find(key);
    if (!v) fail_node(idx, name, std::string("missing field '") + key + "'");
    if (!v->is(json::Type::String))
      fail_node(idx, name, std::string("field '") + key + "' must be a string");
    return v->string;
  }

  int int_field(const json::Value& obj, const char* key, size_t idx, const std::string& name,
                int lo, int hi) const {
    const json::Value* v = obj.find(key);
    if (!v) fail_node(idx, name, std::string("missing field '") + key + "'");
    return int_value(*v, key, idx, name, lo, hi);
  }

  int int_value(const json::Value& v, const char* key, size_t idx, const std::string& name, int lo,
                int hi) const {
    double d = v.number;
    if (!v.is(json::Type::Number) || d != std::floor(d) || d < lo || d > hi)
      fail_node(idx, name,
                std::string("field '") + key + "' must be an integer in [" + std::to_string(lo) +
                    ", " + std::to_string(hi) + "]");
    return int(d);
  }
};

}  // namespace

void parse_graph(const Bundle& b, Graph& g) {
  const std::string& graph_text = b.meta("graph");
  json::Value root = json::parse(graph_text, b.path() + ": metadata 'graph'");
  GraphParser gp{b};
  if (!root.is(json::Type::Object)) gp.fail("is not a JSON object");

  const json::Value* in = root.find("input");
  if (!in || !in->is(json::Type::String) || in->string.empty())
    gp.fail("field 'input' must be a non-empty string");
  g.input_name = in->string;
  g.int8 = b.int8();
  const json::Value* ic = root.find("input_channels");
  if (!ic) gp.fail("missing field 'input_channels'");
  if (!ic->is(json::Type::Number) || ic->number != std::floor(ic->number) || ic->number < 1 ||
      ic->number > kMaxInputChannels)
    gp.fail("field 'input_channels' must be an integer in [1, " +
            std::to_string(kMaxInputChannels) + "] (image channels)");
  g.input_channels = int(ic->number);
  const json::Value* nodes = root.find("nodes");
  if (!nodes || !nodes->is(json::Type::Array)) gp.fail("field 'nodes' must be an array");
  if (nodes->array.empty()) gp.fail("field 'nodes' is empty");
  const json::Value* outv = root.find("output");
  if (!outv || !outv->is(json::Type::String)) gp.fail("field 'output' must be a string");

  std::map<std::string, int> value_id;
  std::map<std::string, size_t> node_names;
  value_id[g.input_name] = 0;
  g.value_names.push_back(g.input_name);
  g.producer.push_back(-1);
  g.consumers.emplace_back();
  g.kind.push_back(Kind::Spatial);
  g.base_channels.push_back(g.input_channels);

  for (size_t idx = 0; idx < nodes->array.size(); ++idx) {
    const json::Value& jn = nodes->array[idx];
    if (!jn.is(json::Type::Object)) gp.fail("node #" + std::to_string(idx) + " is not an object");
    Node n;
    n.name = gp.str_field(jn, "name", idx, "");
    if (n.name.empty()) gp.fail_node(idx, "", "field 'name' is empty");
    if (node_names.count(n.name)) gp.fail_node(idx, n.name, "duplicate node name");
    node_names[n.name] = idx;
    const std::string& op = gp.str_field(jn, "op", idx, n.name);
    if (op == "conv")
      n.op = Op::Conv;
    else if (op == "batchnorm")
      n.op = Op::BatchNorm;
    else if (op == "relu")
      n.op = Op::Relu;
    else if (op == "add")
      n.op = Op::Add;
    else if (op == "maxpool")
      n.op = Op::MaxPool;
    else if (op == "gap")
      n.op = Op::Gap;
    else if (op == "linear")
      n.op = Op::Linear;
    else
      gp.fail_node(
          idx, n.name,
          "unknown op '" + op + "' (known: conv, batchnorm, relu, add, maxpool, gap, linear)");
    n.output = gp.str_field(jn, "output", idx, n.name);
    if (n.output.empty()) gp.fail_node(idx, n.name, "field 'output' is empty");
    if (value_id.count(n.output))
      gp.fail_node(idx, n.name, "output '" + n.output + "' is already defined");

    const json::Value* ins = jn.find("inputs");
    if (!ins || !ins->is(json::Type::Array))
      gp.fail_node(idx, n.name, "field 'inputs' must be an array of strings");
    const size_t want = n.op == Op::Add ? 2 : 1;
    if (ins->array.size() != want)
      gp.fail_node(idx, n.name,
                   std::string("op '") + op + "' takes " + std::to_string(want) +
                       " input(s), got " + std::to_string(ins->array.size()));
    for (const auto& iv : ins->array) {
      if (!iv.is(json::Type::String))
        gp.fail_node(idx, n.name, "field 'inputs' must be an array of strings");
      auto it = value_id.find(iv.string);
      if (it == value_id.end())
        gp.fail_node(idx, n.name,
                     "input '" + iv.string +
                         "' is not the graph input or the output of an "
                         "earlier node (nodes must be in topological order)");
      n.inputs.push_back(it->second);
    }

    const int in0 = n.inputs[0];
    Kind out_kind = g.kind[in0];
    int out_ch = g.base_channels[in0];
    switch (n.op) {
      case Op::Conv: {
        n.kernel = gp.int_field(jn, "kernel", idx, n.name, 1, kMaxKernel);
        n.stride = gp.int_field(jn, "stride", idx, n.name, 1, kMaxKernel);
        n.padding = gp.int_field(jn, "padding", idx, n.name, 0, n.kernel);
        n.in_channels = gp.int_field(jn, "in_channels", idx, n.name, 1, kMaxChannels);
        n.out_channels = gp.int_field(jn, "out_channels", idx, n.name, 1, kMaxChannels);
        if (const json::Value* gv = jn.find("groups"))
          gp.int_value(*gv, "groups", idx, n.name, 1, 1);
        if (const json::Value* dv = jn.find("dilation"))
          gp.int_value(*dv, "dilation", idx, n.name, 1, 1);
        if (g.kind[in0] != Kind::Spatial)
          gp.fail_node(idx, n.name,
                       "conv input '" + g.value_names[in0] + "' is a vector, not a spatial tensor");
        if (g.base_channels[in0] != n.in_channels)
          gp.fail_node(idx, n.name,
                       "in_channels " + std::to_string(n.in_channels) + " but input '" +
                           g.value_names[in0] + "' has " + std::to_string(g.base_channels[in0]) +
                           " channels");
        out_ch = n.out_channels;
        // Base weight and optional bias.
        const std::string wn = n.name + ".weight";
        const TensorView* w = b.find(wn);
        if (!w) b.fail("missing tensor '" + wn + "' (base weight of conv '" + n.name + "')");
        const DType wdt = g.int8 ? DType::I8 : DType::F32;
        if (w->dtype != wdt)
          b.fail_tensor(wn, std::string("dtype is ") + dtype_name(w->dtype) + ", expected " +
                                dtype_name(wdt) + " in a " + b.precision() + " base");
        const std::vector<int64_t> ws = {n.out_channels, n.in_channels, n.kernel, n.kernel};
        if (w->shape != ws) {
          TensorView tmp;
          tmp.shape = ws;
          b.fail_tensor(wn, "shape " + w->shape_str() + ", expected " + tmp.shape_str() +
                                " [out_channels, in_channels, kernel, kernel] from the graph");
        }
        n.weight = w;
        if (g.int8) {
          const std::string sn = n.name + ".weight_scale";
          const TensorView* st = b.find(sn);
          if (!st)
            b.fail("missing tensor '" + sn + "' (per-channel scale of the int8 weight of conv '" +
                   n.name + "')");
          if (st->dtype != DType::F32) b.fail_tensor(sn, "dtype must be F32");
          if (st->shape != std::vector<int64_t>{n.out_channels})
            b.fail_tensor(sn, "shape " + st->shape_str() + ", expected [" +
                                  std::to_string(n.out_channels) + "] (one per output channel)");
          n.scale_view = st;
        }
        const std::string bn = n.name + ".bias";
        if (const TensorView* bt = b.find(bn)) {
          if (bt->dtype != DType::F32) b.fail_tensor(bn, "dtype must be F32");
          if (bt->shape != std::vector<int64_t>{n.out_channels})
            b.fail_tensor(bn, "shape " + bt->shape_str() + ", expected [" +
                                  std::to_string(n.out_channels) + "]");
          n.bias = bt;
        }
        break;
      }
      case Op::BatchNorm: {
        const json::Value* ev = jn.find("eps");
        if (!ev) gp.fail_node(idx, n.name, "missing field 'eps'");
        if (!ev->is(json::Type::Number) || !(ev->number >= 0) || ev->number > 1)
          gp.fail_node(idx, n.name, "field 'eps' must be a number in [0, 1]");
        n.eps = ev->number;
        const int p = g.producer[in0];
        if (p < 0 || g.nodes[size_t(p)].op != Op::Conv)
          gp.fail_node(idx, n.name,
                       "batchnorm input '" + g.value_names[in0] + "' is not the output of a conv");
        if (!g.consumers[in0].empty())
          gp.fail_node(idx, n.name,
                       "conv output '" + g.value_names[in0] +
                           "' has another consumer; a batchnorm must be "
                           "its conv's only consumer");
        break;
      }
      case Op::Relu:
        break;
      case Op::Add: {
        const int in1 = n.inputs[1];
        if (g.kind[in0] != g.kind[in1] || g.base_channels[in0] != g.base_channels[in1])
          gp.fail_node(idx, n.name,
                       "inputs '" + g.value_names[in0] + "' and '" + g.value_names[in1] +
                           "' differ in shape");
        break;
      }
      case Op::MaxPool: {
        n.kernel = gp.int_field(jn, "kernel", idx, n.name, 1, kMaxKernel);
        n.stride = gp.int_field(jn, "stride", idx, n.name, 1, kMaxKernel);
        n.padding = gp.int_field(jn, "padding", idx, n.name, 0, n.kernel / 2);
        if (g.kind[in0] != Kind::Spatial)
          gp.fail_node(idx, n.name, "maxpool input is a vector, not a spatial tensor");
        break;
      }
      case Op::Gap:
        if (g.kind[in0] != Kind::Spatial)
          gp.fail_node(idx, n.name, "gap input is a vector, not a spatial tensor");
        out_kind = Kind::Vector;
        break;
      case Op::Linear:
        if (g.kind[in0] != Kind::Vector)
          gp.fail_node(
              idx, n.name,
              "linear input '" + g.value_names[in0] + "' is a spatial tensor; put a gap before it");
        out_ch = -1;  // the head's class count comes from the task
        break;
    }
    for (int v : n.inputs) {
      if (g.consumers[v].size() == 1 && g.producer[v] >= 0 &&
          g.nodes[size_t(g.producer[v])].op == Op::Conv &&
          g.nodes[g.consumers[v][0]].op == Op::BatchNorm)
        gp.fail_node(idx, n.name,
                     "reads conv output '" + g.value_names[v] +
                         "' which also feeds a batchnorm; a batchnorm must "
                         "be its conv's only consumer");
      g.consumers[v].push_back(int(idx));
    }
    n.out = int(g.value_names.size());
    value_id[n.output] = n.out;
    g.value_names.push_back(n.output);
    g.producer.push_back(int(idx));
    g.consumers.emplace_back();
    g.kind.push_back(out_kind);
    g.base_channels.push_back(out_ch);
    g.nodes.push_back(std::move(n));
  }

  auto ot = value_id.find(outv->string);
  if (ot == value_id.end()) gp.fail("output '" + outv->string + "' is not defined by any node");
  g.output = ot->second;
  if (g.output == 0) gp.fail("output is the graph input");
  if (g.kind[g.output] != Kind::Vector)
    gp.fail("output '" + outv->string +
            "' is a spatial tensor; the runtime returns class logits (end with gap and linear)");
  {
    const int p = g.producer[g.output];
    if (g.nodes[size_t(p)].op == Op::Conv && !g.consumers[g.output].empty() &&
        g.nodes[size_t(g.consumers[g.output][0])].op == Op::BatchNorm)
      gp.fail("output '" + outv->string + "' is a conv output that also feeds a batchnorm");
  }
  for (size_t v = 0; v < g.value_names.size(); ++v) {
    if (int(v) != g.output && g.consumers[v].empty()) {
      if (v == 0) gp.fail("the graph input '" + g.input_name + "' is never used");
      gp.fail_node(size_t(g.producer[v]), g.nodes[size_t(g.producer[v])].name,
                   "output '" + g.value_names[v] + "' is never used");
    }
  }

  // Nothing but conv weights and biases in a base bundle.
  for (const auto& t : b.tensors()) {
    bool known = false;
    for (const auto& n : g.nodes)
      if (n.op == Op::Conv && (n.weight == &t || n.bias == &t || n.scale_view == &t)) known = true;
    if (!known)
      b.fail_tensor(t.name, std::string("not a conv weight or bias of the graph (a base bundle "
                                        "holds only '<conv>.weight'") +
                                (g.int8 ? ", '<conv>.weight_scale'" : "") + " and '<conv>.bias')");
  }
}

BaseModel::BaseModel(const std::string& path) {
  bundle_ = std::make_unique<Bundle>(path, "spaedge-base");
  const Bundle& b = *bundle_;
  model_ = b.meta("model");
  parse_graph(b, graph_);
  Graph& g = graph_;
  for (const auto& t : b.tensors()) {
    if (t.dtype != DType::F32) continue;  // I8 weights: every value is valid
    for (size_t i = 0; i < t.numel; ++i) {
      if (!std::isfinite(t.f32(i)))
        b.fail_tensor(t.name, "element " + std::to_string(i) + " is not finite");
    }
  }

  // Task application reads the conv weights where the bundle holds them
  // (kernels::conv_apply gathers each kept output's OIHW row): the runtime
  // keeps no other copy of the base.
  for (Node& n : g.nodes) {
    if (n.op != Op::Conv) continue;
    if (n.weight->numel >= (size_t(1) << 31))
      b.fail_tensor(n.weight->name, "has 2^31 or more elements (the runtime indexes in int32)");
    if (g.int8) {
      // docs/int8.md (a): real weight = scale[o] * q, the scale finite and > 0.
      n.weight_s8 = reinterpret_cast<const int8_t*>(n.weight->data);
      n.weight_scale.resize(n.scale_view->numel);
      for (size_t o = 0; o < n.scale_view->numel; ++o) {
        const float v = n.scale_view->f32(o);
        if (!(std::isfinite(v) && v > 0)) {
          char buf[48];
          std::snprintf(buf, sizeof buf, "%g", double(v));
          b.fail_tensor(n.scale_view->name, "element " + std::to_string(o) + " is " + buf +
                                                ", a weight scale must be finite and > 0");
        }
        n.weight_scale[o] = v;
      }
      continue;
    }
    if (reinterpret_cast<uintptr_t>(n.weight->data) % alignof(float) != 0)
      b.fail_tensor(n.weight->name, "data is not 4-byte aligned in the data section");
    if (n.weight->numel >= (size_t(1) << 31))
      b.fail_tensor(n.weight->name, "has 2^31 or more elements (the runtime indexes in int32)");
    n.weight_f32 = reinterpret_cast<const float*>(n.weight->data);
  }
}

}  // namespace spaedge
