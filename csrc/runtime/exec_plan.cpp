// The execution plan: step fusion and the activation arena (exec_plan.h).
#include "runtime/exec_plan.h"

#include <algorithm>
#include <limits>

#include "runtime/buffer.h"
#include "runtime/task.h"

namespace spaedge {

namespace {
constexpr size_t kNone = std::numeric_limits<size_t>::max();  // a value with no arena slot
}  // namespace

void build_exec_plan(const Graph& g, Task& t) {
  ExecPlan& p = t.exec_plan;
  const size_t N = g.nodes.size();
  const size_t NV = g.value_names.size();
  std::vector<int> conv_index(N, -1), linear_index(N, -1);
  for (size_t i = 0; i < t.convs.size(); ++i) conv_index[size_t(t.convs[i].node)] = int(i);
  for (size_t i = 0; i < t.linears.size(); ++i) linear_index[size_t(t.linears[i].node)] = int(i);

  // Fusion: conv [-> batchnorm] [-> add] [-> relu]; add [-> relu].
  std::vector<int> owner(N, -1);            // node -> node index of the step that absorbs it
  std::vector<int> last(N, -1);             // step head -> last absorbed node
  std::vector<int> residual(N, -1);         // conv head -> residual value id
  std::vector<int> end_value(N, -1);        // step head -> value it materialises
  std::vector<int> chain_of_value(NV, -1);  // value -> conv head whose chain ends there
  std::vector<bool> has_add(N, false);
  auto sole_consumer = [&](int v, Op op) -> int {
    if (v == g.output || g.consumers[size_t(v)].size() != 1) return -1;
    int c = g.consumers[size_t(v)][0];
    return g.nodes[size_t(c)].op == op ? c : -1;
  };
  for (size_t i = 0; i < N; ++i) {
    if (g.nodes[i].op != Op::Conv) continue;
    owner[i] = int(i);
    last[i] = int(i);
    int v = g.nodes[i].out;
    int bn = sole_consumer(v, Op::BatchNorm);
    if (bn >= 0) {
      owner[size_t(bn)] = int(i);
      last[i] = bn;
      v = g.nodes[size_t(bn)].out;
    }
    end_value[i] = v;
    chain_of_value[size_t(v)] = int(i);
  }
  for (size_t a = 0; a < N; ++a) {
    const Node& n = g.nodes[a];
    if (n.op != Op::Add || n.inputs[0] == n.inputs[1]) continue;
    int best = -1, best_input = -1;
    for (int k = 0; k < 2; ++k) {
      int u = n.inputs[size_t(k)];
      int c = chain_of_value[size_t(u)];
      if (c < 0 || has_add[size_t(c)] || sole_consumer(u, Op::Add) != int(a)) continue;
      if (c > best) {
        best = c;
        best_input = k;
      }
    }
    if (best < 0) continue;
    const int u = n.inputs[size_t(best_input)];
    residual[size_t(best)] = n.inputs[size_t(1 - best_input)];
    has_add[size_t(best)] = true;
    owner[a] = best;
    last[size_t(best)] = int(a);
    chain_of_value[size_t(u)] = -1;
    end_value[size_t(best)] = n.out;
    chain_of_value[size_t(n.out)] = best;
  }
  for (size_t i = 0; i < N; ++i) {
    const Node& n = g.nodes[i];
    if (owner[i] == int(i) && n.op == Op::Conv) {
      int r = sole_consumer(end_value[i], Op::Relu);
      if (r >= 0) {
        owner[size_t(r)] = int(i);
        last[i] = r;
        end_value[i] = g.nodes[size_t(r)].out;
      }
    } else if (n.op == Op::Add && owner[i] < 0) {
      owner[i] = int(i);
      last[i] = int(i);
      end_value[i] = n.out;
      int r = sole_consumer(n.out, Op::Relu);
      if (r >= 0) {
        owner[size_t(r)] = int(i);
        last[i] = r;
        end_value[i] = g.nodes[size_t(r)].out;
      }
    }
  }

  // Emit steps in node order; a fused step runs where its last node stood.
  for (size_t i = 0; i < N; ++i) {
    const Node& n = g.nodes[i];
    int head = owner[i];
    if (head >= 0 && last[size_t(head)] != int(i)) continue;
    Step s;
    if (head >= 0) {
      const Node& h = g.nodes[size_t(head)];
      for (size_t j = size_t(head); j <= i; ++j)
        if (owner[j] == head) s.label += (s.label.empty() ? "" : "+") + g.nodes[j].name;
      s.in = h.inputs[0];
      s.out = end_value[size_t(head)];
      s.relu = g.nodes[i].op == Op::Relu;
      if (h.op == Op::Conv) {
        s.kind = StepKind::Conv;
        s.index = conv_index[size_t(head)];
        s.in2 = residual[size_t(head)];
        s.geom = t.convs[size_t(s.index)].geom;
      } else {
        s.kind = StepKind::Add;
        s.in2 = h.inputs[1];
      }
    } else {
      s.label = n.name;
      s.in = n.inputs[0];
      s.out = n.out;
      switch (n.op) {
        case Op::Relu:
          s.kind = StepKind::Relu;
          break;
        case Op::MaxPool:
          s.kind = StepKind::MaxPool;
          s.pool_k = n.kernel;
          s.pool_s = n.stride;
          s.pool_p = n.padding;
          break;
        case Op::Gap:
          s.kind = StepKind::Gap;
          break;
        case Op::Linear:
          s.kind = StepKind::Linear;
          s.index = linear_index[i];
          break;
        default:
          throw Error("internal error: node '" + n.name + "' (" + op_name(n.op) +
                      ") left unplanned");
      }
    }
    const ValueShape& is = p.shape[size_t(s.in)];
    s.h = is.h;
    s.w = is.w;
    s.c = is.c;
    p.steps.push_back(std::move(s));
  }
  p.output = g.output;

  // Liveness-based arena assignment.
  const int S = int(p.steps.size());
  std::vector<int> last_use(NV, -1);
  for (int s = 0; s < S; ++s) {
    last_use[size_t(p.steps[size_t(s)].in)] = s;
    if (p.steps[size_t(s)].in2 >= 0) last_use[size_t(p.steps[size_t(s)].in2)] = s;
  }
  last_use[size_t(g.output)] = S;  // read after the last step
  std::vector<size_t> slot_size;
  std::vector<bool> slot_free;
  std::vector<int> value_slot(NV, -1);
  auto allocate = [&](size_t floats) -> int {
    int best = -1;
    for (size_t k = 0; k < slot_size.size(); ++k) {
      if (!slot_free[k]) continue;
      if (best < 0) {
        best = int(k);
        continue;
      }
      size_t bs = slot_size[size_t(best)], ks = slot_size[k];
      bool b_fits = bs >= floats, k_fits = ks >= floats;
      // Prefer the smallest slot that fits, else the largest one (grown).
      if ((k_fits && (!b_fits || ks < bs)) || (!k_fits && !b_fits && ks > bs)) best = int(k);
    }
    if (best < 0) {
      slot_size.push_back(floats);
      slot_free.push_back(false);
      return int(slot_size.size() - 1);
    }
    slot_free[size_t(best)] = false;
    slot_size[size_t(best)] = std::max(slot_size[size_t(best)], floats);
    return best;
  };
  value_slot[0] = allocate(p.shape[0].floats());
  for (int s = 0; s < S; ++s) {
    const Step& st = p.steps[size_t(s)];
    const size_t need = p.shape[size_t(st.out)].floats();
    int reuse = -1;
    // In place: the conv epilogue may overwrite its residual exactly; the
    // element-wise relu/add steps may overwrite any dying operand.
    if (st.kind == StepKind::Conv) {
      if (st.in2 >= 0 && st.in2 != st.in && last_use[size_t(st.in2)] == s) reuse = st.in2;
    } else if (st.kind == StepKind::Relu || st.kind == StepKind::Add) {
      if (last_use[size_t(st.in)] == s)
        reuse = st.in;
      else if (st.in2 >= 0 && last_use[size_t(st.in2)] == s)
        reuse = st.in2;
    }
    if (reuse >= 0 && p.shape[size_t(reuse)].floats() == need) {
      value_slot[size_t(st.out)] = value_slot[size_t(reuse)];
    } else {
      reuse = -1;
      value_slot[size_t(st.out)] = allocate(need);
    }
    for (int v : {st.in, st.in2}) {
      if (v >= 0 && v != reuse && last_use[size_t(v)] == s && value_slot[size_t(v)] >= 0 &&
          !slot_free[size_t(value_slot[size_t(v)])] &&
          value_slot[size_t(v)] != value_slot[size_t(st.out)])
        slot_free[size_t(value_slot[size_t(v)])] = true;
    }
  }
  std::vector<size_t> slot_offset(slot_size.size());
  size_t total = 0;
  for (size_t k = 0; k < slot_size.size(); ++k) {
    slot_offset[k] = total;
    total += round_floats(slot_size[k]);
  }
  p.arena_floats = total;
  p.offset.assign(NV, kNone);
  for (size_t v = 0; v < NV; ++v)
    if (value_slot[v] >= 0) p.offset[v] = slot_offset[size_t(value_slot[v])];
}

}  // namespace spaedge
