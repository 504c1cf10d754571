// Base graphs refused, naming the node and the field.
#include "runtime_fixture.h"

namespace {

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

}  // namespace

int main() {
  Files f;
  test_graph_errors(f);
  return tcheck::summary("test_runtime_graph_errors");
}
