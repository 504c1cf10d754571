// Files: mutated task bundles load or are refused (nothing else), files that
// change underneath a loaded runtime change nothing, and inspect_bundle
// applies the same rules to the header alone.
#include "runtime_fixture.h"

namespace {

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
  CHECK(b.format == "spaedge-base" && b.version == "4" && b.hash_verified &&
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

int main() {
  Files f;
  test_files_change_underneath(f);
  test_inspect(f);
  test_fuzz(f);
  return tcheck::summary("test_runtime_files");
}
