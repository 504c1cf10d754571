// libFuzzer harness for the bundle reader, graph parsing and task application.
//
// Each input is written to a temporary file (the reader's only entry point is
// a path) and then:
//   - inspected as `spaedge info` does (inspect_bundle: header and metadata
//     checked without the data);
//   - if it says "spaedge-base" somewhere, a Runtime is built on it (the base
//     reader and graph validation);
//   - otherwise it is loaded as a task bundle against a fixed small base
//     (SPAEDGE_FUZZ_BASE, default tests/fuzz/seeds/base.safetensors), which also
//     applies it (gather + merge + fold + pack), and a task that loads is run
//     once on a fixed input in both apply modes; a task that says "int8"
//     goes to the fixed int8 base instead (SPAEDGE_FUZZ_BASE_INT8, default
//     tests/fuzz/seeds/base_int8.safetensors: requantization, u8 executor).
// Only spaedge::Error may escape the runtime; anything else (another
// exception, a sanitizer report, a crash) is a finding.
//
// Random mutations almost never keep the SHA-256 content hash valid, which
// would stop the fuzzer at the hash check. Before loading, the harness
// therefore rewrites the 64 hex digits of a well-formed "content_hash" in the
// header to the hash the reader computes for the file (the canonical hash of
// its metadata, tensor table and data: docs/format.md; same length, so nothing
// moves), unless the input's last byte is 0x00 (so the mismatch path stays covered).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "spaedge/bundle.h"
#include "spaedge/runtime.h"

namespace {

std::unique_ptr<spaedge::Runtime> g_rt, g_rt8;
std::string g_path;

bool write_all(const std::string& path, const std::vector<uint8_t>& buf);

// Rewrites the stored content hash to the computed one (see the top); the
// file at g_path holds `buf` before and after.
void fix_content_hash(std::vector<uint8_t>& buf) {
  if (buf.size() < 8 || buf.back() == 0) return;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | buf[size_t(i)];
  if (n > buf.size() - 8) return;
  std::string stored, computed;
  try {
    spaedge::BundleOptions o;
    o.verify_hash = false;
    spaedge::Bundle b(g_path, "", o);
    const std::string* h = b.find_meta("content_hash");
    if (!h || h->size() != 64) return;
    stored = *h;
    computed = b.computed_hash();
  } catch (const spaedge::Error&) {
    return;  // refused before the hash: loading refuses it the same way
  }
  if (stored == computed) return;
  static const char key[] = "\"content_hash\":\"";
  const size_t klen = sizeof(key) - 1;
  const char* hdr = reinterpret_cast<const char*>(buf.data() + 8);
  const size_t hlen = size_t(n);
  for (size_t i = 0; i + klen + 64 < hlen; ++i) {
    if (std::memcmp(hdr + i, key, klen) != 0 || std::memcmp(hdr + i + klen, stored.data(), 64) != 0)
      continue;
    std::memcpy(buf.data() + 8 + i + klen, computed.data(), 64);
    if (!write_all(g_path, buf)) std::abort();
    return;
  }
}

bool write_all(const std::string& path, const std::vector<uint8_t>& buf) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return false;
  bool ok = buf.empty() || std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  return std::fclose(f) == 0 && ok;
}

void run_once(spaedge::Runtime& rt) {
  const std::string name = rt.active_task();
  if (name.empty()) return;
  spaedge::TaskInfo ti = rt.task_info(name);
  const size_t in_n = size_t(ti.channels) * size_t(ti.height) * size_t(ti.width);
  if (in_n > (size_t(1) << 16)) return;  // keep executions fast; sizes are validated anyway
  std::vector<float> x(in_n);
  for (size_t i = 0; i < in_n; ++i) x[i] = float(int(i % 7) - 3) * 0.25f;
  std::vector<float> y(size_t(ti.classes));
  rt.run(x.data(), x.size(), 1, y.data(), y.size());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* base = std::getenv("SPAEDGE_FUZZ_BASE");
  const std::string base_path = base ? base : "tests/fuzz/seeds/base.safetensors";
  const char* tmp = std::getenv("TMPDIR");
  g_path = std::string(tmp ? tmp : "/tmp") + "/spaedge-fuzz-" + std::to_string(getpid()) +
           ".safetensors";
  const char* base8 = std::getenv("SPAEDGE_FUZZ_BASE_INT8");
  const std::string base8_path = base8 ? base8 : "tests/fuzz/seeds/base_int8.safetensors";
  try {
    g_rt = std::make_unique<spaedge::Runtime>(base_path, 1);
    g_rt8 = std::make_unique<spaedge::Runtime>(base8_path, 1);
  } catch (const spaedge::Error& e) {
    std::fprintf(stderr,
                 "fuzz_bundle: cannot load a fixed base (set SPAEDGE_FUZZ_BASE and "
                 "SPAEDGE_FUZZ_BASE_INT8): %s\n",
                 e.what());
    std::abort();
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> buf(data, data + size);
  if (!write_all(g_path, buf)) std::abort();
  fix_content_hash(buf);
  static const char base_tag[] = "spaedge-base";
  const bool is_base =
      std::search(buf.begin(), buf.end(), base_tag, base_tag + sizeof(base_tag) - 1) != buf.end();
  static const char int8_tag[] = "int8";
  const bool is_int8 =
      std::search(buf.begin(), buf.end(), int8_tag, int8_tag + sizeof(int8_tag) - 1) != buf.end();
  try {
    spaedge::BundleSummary s = spaedge::inspect_bundle(g_path);
    (void)s;
  } catch (const spaedge::Error&) {
  }
  try {
    if (is_base) {
      spaedge::Runtime rt(g_path, 1);
      (void)rt.base_hash();
    } else if (is_int8) {
      try {
        g_rt8->load_task(g_path);
        run_once(*g_rt8);
      } catch (const spaedge::Error&) {
      }
      for (const auto& t : g_rt8->tasks()) g_rt8->unload_task(t);
    } else {
      g_rt->load_task(g_path);
      run_once(*g_rt);
      g_rt->set_mode("lowrank");
      run_once(*g_rt);
      g_rt->set_mode("merged");
      for (const auto& t : g_rt->tasks()) g_rt->unload_task(t);
    }
  } catch (const spaedge::Error&) {
    // refused with a message: the expected outcome for bad input
  }
  unlink(g_path.c_str());
  return 0;
}
