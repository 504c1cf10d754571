// The runtime against a direct double-precision reference: one task, and
// switching between two in both apply modes over 1 to 3 threads.
#include "runtime_fixture.h"

namespace {

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

// Pear's shared adapter, stored once in base coordinates (4 x 4, rank 2) and
// used by c2 (3x3) and down (1x1): each gathers its kept rows and columns
// ({0, 2, 3}: not the first three) and runs as the same task with those
// factors dense, in both modes.
void test_shared_adapters(const Files& f) {
  const SharedAdapter s{2, 4, 4, seq(8, 0.4f, 0.05f), seq(8, 0.6f, -0.1f)};
  TaskSpec shared = tiny_task(), dense = tiny_task();
  shared.f.erase("c2.lora_a");
  shared.f.erase("c2.lora_b");
  gather_into(dense, "c2", s);
  gather_into(dense, "down", s);
  const std::string p =
      shared_task(f, "shared.safetensors", shared, {{"s", s}}, "{\"c2\":\"s\",\"down\":\"s\"}");
  {
    spaedge::BaseModel base(f.base);
    spaedge::Task t(base, p);
    CHECK(t.convs[1].rank() == 2 && t.convs[2].rank() == 2 && t.convs[1].shared &&
          t.convs[1].shared->set == "s" && !t.convs[0].shared);
    CHECK(t.convs[1].lowrank->a == dense.f.at("c2.lora_a").second &&
          t.convs[2].lowrank->b == dense.f.at("down.lora_b").second);
    CHECK(t.convs[1].lowrank->a != std::vector<float>(s.a.begin(), s.a.begin() + 3));
  }
  const std::vector<float> x = seq(2 * 2 * 5 * 4, 1.0f);
  for (const char* mode : {"merged", "lowrank"})
    for (int threads : {1, 2}) {
      Runtime rt(f.base, threads);
      rt.set_mode(mode);
      rt.load_task(p);
      std::vector<float> y(6, -1.0f);
      rt.run(x.data(), 2, y.data());
      CHECK_MSG(close(y.data(), reference(f.m, dense, x.data())) &&
                    close(y.data() + 3, reference(f.m, dense, x.data() + 40)),
                std::string(mode) + ", " + std::to_string(threads) + " threads");
    }
}

}  // namespace

int main() {
  Files f;
  test_numerics(f);
  test_switching(f);
  // Task application split over the caller and helper threads, both modes
  // (c2 of the second task takes the general path, the other convs one pass).
  test_switching(f, 2);
  test_switching(f, 3, "lowrank");
  test_shared_adapters(f);
  return tcheck::summary("test_runtime_numerics");
}
