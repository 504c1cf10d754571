// Task bundles refused against the base, naming the file and the tensor or
// metadata field.
#include "runtime_fixture.h"

namespace {

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

// Pear's shared adapters (family 'shared'): shapes that do not fit the base
// convs, missing or unused tensors, bad entries and kept channels out of range
// are refused naming the tensor or the entry.
void test_shared_adapter_errors(const Files& f) {
  const SharedAdapter good{2, 4, 4, seq(8, 0.4f), seq(8, 0.6f)};
  TaskSpec base = tiny_task();
  base.f.erase("c2.lora_a");
  base.f.erase("c2.lora_b");
  const std::string both = "{\"c2\":\"s\",\"down\":\"s\"}";
  Runtime rt(f.base, 1);
  auto refused = [&](const std::string& file, const TaskSpec& t,
                     const std::map<std::string, SharedAdapter>& adapters,
                     const std::string& entries, std::vector<std::string> needles, int line) {
    const std::string p = shared_task(f, file, t, adapters, entries);
    needles.insert(needles.begin(), p + ": ");
    tcheck::expect_error([&] { rt.load_task(p); }, needles, __FILE__, line);
  };
  rt.load_task(shared_task(f, "shared_ok.safetensors", base, {{"s", good}}, both));  // the control
  CHECK(rt.tasks().size() == 1);
  SharedAdapter kept = good;  // stored at the kept channels, not the base's
  kept.I = 3;
  kept.a = seq(6, 0.4f);
  refused("sh_kept.safetensors", base, {{"s", kept}}, both,
          {"metadata 'shared_adapters': entry 'c2': shared adapter 's' is 4x3",
           "but conv 'c2' has 4x4 base channels"},
          __LINE__);
  SharedAdapter rank = good;  // b's rank is not a's
  rank.b = seq(12, 0.6f);
  rank.r = 2;
  {
    TaskSpec t = base;
    const std::string p = f.dir.file("sh_rank.safetensors");
    std::vector<tb::Tensor> ts;
    for (const auto& kv : t.idx) ts.push_back(tb::i32(kv.first, kv.second));
    for (const auto& kv : t.f) ts.push_back(tb::f32(kv.first, kv.second.first, kv.second.second));
    ts.push_back(tb::f32("shared.s.a", {2, 4}, good.a));
    ts.push_back(tb::f32("shared.s.b", {4, 3}, rank.b));
    tb::Meta m = task_meta(t, f.base_hash);
    m.push_back({"shared_adapters", both});
    tb::write_file(p, tb::bundle(ts, m));
    EXPECT_ERROR(rt.load_task(p), p, "tensor 'shared.s.b': shape [4, 3], expected [O, 2]");
  }
  SharedAdapter zero = good;
  zero.r = 0;
  zero.a.clear();
  zero.b.clear();
  refused("sh_zero.safetensors", base, {{"s", zero}}, both,
          {"tensor 'shared.s.a': shape [0, 4], expected [r, I]", "each at least 1"}, __LINE__);
  SharedAdapter nan = good;
  nan.a[5] = std::nanf("");
  refused("sh_nan.safetensors", base, {{"s", nan}}, both,
          {"tensor 'shared.s.a': element 5 is not finite"}, __LINE__);
  refused("sh_missing.safetensors", base, {}, both,
          {"missing tensor 'shared.s.a' (shared adapter 's' of conv 'c2'"}, __LINE__);
  refused("sh_unused.safetensors", base, {{"s", good}, {"t", good}}, both,
          {"tensor 'shared.t.a': unknown tensor: no entry of metadata 'shared_adapters' uses"},
          __LINE__);
  refused("sh_noconv.safetensors", base, {{"s", good}}, "{\"c9\":\"s\"}",
          {"metadata 'shared_adapters': entry 'c9': no conv of the base is called 'c9'"}, __LINE__);
  refused("sh_own.safetensors", tiny_task(), {{"s", good}}, both,
          {"entry 'c2': the conv has its own lora_a/lora_b"}, __LINE__);
  {  // c1 is 4 x 2 in the base: the 4 x 4 adapter does not fit it
    TaskSpec t = base;
    t.f.erase("c1.lora_a");
    t.f.erase("c1.lora_b");
    refused("sh_c1.safetensors", t, {{"s", good}}, "{\"c1\":\"s\"}",
            {"entry 'c1': shared adapter 's' is 4x4", "conv 'c1' has 4x2 base channels"}, __LINE__);
  }
  {  // a kept channel the adapter (and the base) does not have: refused before any gather
    TaskSpec t = base;
    t.idx["c2.out_index"] = {0, 2, 4};
    refused("sh_range.safetensors", t, {{"s", good}}, both,
            {"tensor 'c2.out_index': index 4 out of range for 4 output channels"}, __LINE__);
    t = base;
    t.idx["down.in_index"] = {0, 2, 9};
    refused("sh_range_in.safetensors", t, {{"s", good}}, both, {"tensor 'down.in_index'"},
            __LINE__);
  }
  refused("sh_notstring.safetensors", base, {{"s", good}}, "{\"c2\":3}",
          {"metadata 'shared_adapters': entry 'c2' must map to a shared adapter name"}, __LINE__);
  CHECK(rt.tasks().size() == 1);
}

}  // namespace

int main() {
  Files f;
  test_task_errors(f);
  test_shared_adapter_errors(f);
  return tcheck::summary("test_runtime_task_errors");
}
