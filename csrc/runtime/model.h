// Base model: the parsed, validated graph of a spaedge-base bundle plus its
// frozen conv weights (the bundle's private copy, OIHW, the only copy).
// Internal header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/buffer.h"
#include "runtime/limits.h"
#include "spaedge/bundle.h"

namespace spaedge {

enum class Op { Conv, BatchNorm, Relu, Add, MaxPool, Gap, Linear };

const char* op_name(Op op);

struct Node {
  std::string name;
  std::string output;
  Op op = Op::Relu;
  std::vector<int> inputs;  // value ids; value 0 is the graph input
  int out = -1;             // value id of the output
  // conv / maxpool
  int kernel = 0, stride = 1, padding = 0;
  // conv
  int in_channels = 0, out_channels = 0;
  const TensorView* weight = nullptr;      // base weight [O, I, k, k] (the bundle's private copy)
  const float* weight_f32 = nullptr;       // its data as floats (fp32 base: F32, 4-byte aligned)
  const int8_t* weight_s8 = nullptr;       // its data as s8 (int8 base: I8)
  std::vector<float> weight_scale;         // int8 base: per output channel, finite and > 0
  const TensorView* bias = nullptr;        // optional base bias [O]
  const TensorView* scale_view = nullptr;  // int8 base: '<conv>.weight_scale' F32 [O]
  // batchnorm
  double eps = 1e-5;
};

// Kind of a value: spatial H x W x C activation or a C-vector (after gap).
enum class Kind { Spatial, Vector };

struct Graph {
  std::string input_name;
  int input_channels = 0;
  std::vector<Node> nodes;
  std::vector<std::string> value_names;     // value id -> name; 0 is the input
  std::vector<int> producer;                // value id -> node index (-1 for the input)
  std::vector<std::vector<int>> consumers;  // value id -> node indices (in order)
  std::vector<Kind> kind;                   // value id -> kind
  std::vector<int> base_channels;           // value id -> channels in the base (-1: task-defined)
  int output = -1;                          // value id of the graph output
  bool int8 = false;                        // an int8 base (docs/int8.md): I8 weights + scales
};

// Parses and validates a base bundle's metadata 'graph' and its tensor table
// against it (every conv weight present with the graph's shape and the
// bundle's precision's dtype, F32 or I8; an int8 base's weight scales F32
// [O]; biases' shapes; no other tensor). Reads no tensor data: `b` may be
// header-only.
void parse_graph(const Bundle& b, Graph& g);

class BaseModel {
 public:
  explicit BaseModel(const std::string& path);
  const Bundle& bundle() const { return *bundle_; }
  const Graph& graph() const { return graph_; }
  const std::string& model_name() const { return model_; }
  const std::string& content_hash() const { return bundle_->content_hash(); }
  bool int8() const { return graph_.int8; }
  const std::string& path() const { return bundle_->path(); }

 private:
  std::unique_ptr<Bundle> bundle_;
  Graph graph_;
  std::string model_;
};

}  // namespace spaedge
