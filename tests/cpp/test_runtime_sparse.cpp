// Sparse-with-bitmask family: sparse low-rank factors and sparse updates run
// as their dense forms; damaged masks and mixed forms are refused.
#include "runtime_fixture.h"

namespace {

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
  // A conv with sparse factors of its own cannot also use a shared adapter (Pear).
  Runtime rt(f.base, 1);
  TaskSpec t = tiny_task();
  sparse_c1(t);
  const SharedAdapter s{1, 4, 2, seq(2, 0.3f), seq(4, 0.2f)};
  const std::string p =
      shared_task(f, "sparse_shared.safetensors", t, {{"s", s}}, "{\"c1\":\"s\"}");
  EXPECT_ERROR(rt.load_task(p), p, "metadata 'shared_adapters': entry 'c1'",
               "the conv has its own lora_a/lora_b");
}

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

}  // namespace

int main() {
  Files f;
  test_sparse_factors(f);
  test_sparse_delta(f);
  return tcheck::summary("test_runtime_sparse");
}
