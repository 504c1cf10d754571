// Bundle container tests: SHA-256, the strict JSON parser, and the safetensors
// reader refusing every kind of bad file with the right field named.
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "runtime/json.h"
#include "runtime/testing.h"
#include "spaedge/bundle.h"
#include "test_bundle_writer.h"

using spaedge::Bundle;
using tb::TempDir;

namespace {

void test_sha256_paths();

void test_sha256() {
  test_sha256_paths();
  using spaedge::Sha256;
  CHECK(Sha256::hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(Sha256::hex("abc", 3) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(Sha256::hex(two.data(), two.size()) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string mil(1000000, 'a');
  CHECK(Sha256::hex(mil.data(), mil.size()) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Streaming in odd pieces gives the same digest as one call.
  for (size_t piece : {1u, 3u, 55u, 56u, 63u, 64u, 65u, 1000u}) {
    Sha256 h;
    for (size_t i = 0; i < mil.size(); i += piece)
      h.update(mil.data() + i, std::min(piece, mil.size() - i));
    uint8_t d[32];
    h.finish(d);
    CHECK(spaedge::to_hex(d, 32) ==
          "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
  // Lengths around the padding boundary.
  const std::string s55(55, 'x'), s56(56, 'x'), s64(64, 'x');
  CHECK(Sha256::hex(s55.data(), 55) != Sha256::hex(s56.data(), 56));
  Sha256 a;
  a.update(s56.data(), 56);
  uint8_t da[32];
  a.finish(da);
  CHECK(spaedge::to_hex(da, 32) == Sha256::hex(s56.data(), 56));
  CHECK(Sha256::hex(s64.data(), 64) != Sha256::hex(s56.data(), 56));
}

// The accelerated path (SHA-NI where the CPU has it) must agree with the
// portable one on every length around the block boundaries and on big inputs.
void test_sha256_paths() {
  using spaedge::Sha256;
  std::printf("sha256 implementation: %s\n", Sha256::implementation());
  std::vector<uint8_t> data(200000);
  uint32_t x = 12345;
  for (auto& b : data) {
    x = x * 1664525u + 1013904223u;
    b = uint8_t(x >> 24);
  }
  std::vector<size_t> lens;
  for (size_t n = 0; n <= 260; ++n) lens.push_back(n);
  for (size_t n : {1000u, 4095u, 4096u, 65536u, 65537u, 200000u}) lens.push_back(n);
  int mismatches = 0;
  for (size_t n : lens) {
    std::string fast =
        Sha256::hex(data.data() + 1, std::min(n, data.size() - 1));  // unaligned start
    Sha256::force_portable(true);
    std::string slow = Sha256::hex(data.data() + 1, std::min(n, data.size() - 1));
    Sha256::force_portable(false);
    if (fast != slow) ++mismatches;
  }
  CHECK(mismatches == 0);
  Sha256::force_portable(true);
  CHECK(Sha256::hex("abc", 3) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(std::string(Sha256::implementation()) == "portable");
  Sha256::force_portable(false);
}

void test_json() {
  namespace json = spaedge::json;
  auto ok = [](const std::string& s) {
    try {
      json::parse(s, "t");
      return true;
    } catch (const spaedge::Error&) {
      return false;
    }
  };
  json::Value v = json::parse(
      R"( {"a": [1, -2.5e3, true, false, null], "b": {"c": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}, "n": 0} )",
      "t");
  CHECK(v.is(json::Type::Object) && v.object.size() == 3);
  CHECK(v.find("a")->array.size() == 5);
  CHECK(v.find("a")->array[0].is_integer && v.find("a")->array[0].integer == 1);
  CHECK(v.find("a")->array[1].number == -2500.0 && !v.find("a")->array[1].is_integer);
  CHECK(v.find("b")->find("c")->string == "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(v.object[0].first == "a" && v.object[2].first == "n");
  CHECK(ok("[]") && ok("{}") && ok("\"\"") && ok("0") && ok("-0.0e-0") && ok("1E+2"));
  CHECK(ok("123456789012345678901234567890"));  // big, not an int64: still a number
  CHECK(ok("1e-400"));                          // underflows to 0: accepted
  CHECK(!ok(""));
  CHECK(!ok("{"));
  CHECK(!ok("{\"a\":1,}"));
  CHECK(!ok("[1,]"));
  CHECK(!ok("{\"a\":1 \"b\":2}"));
  CHECK(!ok("{\"a\":1,\"a\":2}"));
  CHECK(!ok("01"));
  CHECK(!ok("1."));
  CHECK(!ok(".5"));
  CHECK(!ok("+1"));
  CHECK(!ok("1e"));
  CHECK(!ok("1e400"));
  CHECK(!ok("NaN"));
  CHECK(!ok("tru"));
  CHECK(!ok("nul"));
  CHECK(!ok("\"\\x\""));
  CHECK(!ok("\"\\u12\""));
  CHECK(!ok("\"\\ud800\""));
  CHECK(!ok("\"\\udc00\""));
  CHECK(!ok("\"a\nb\""));
  CHECK(!ok("\"\xff\""));
  CHECK(!ok("\"\xc0\xaf\""));      // overlong
  CHECK(!ok("\"\xed\xa0\x80\""));  // encoded surrogate
  CHECK(!ok("[1] x"));
  CHECK(!ok("// c\n1"));
  CHECK(!ok(std::string(100, '[') + std::string(100, ']')));  // too deep
  CHECK(ok(std::string(50, '[') + std::string(50, ']')));
  EXPECT_ERROR(json::parse("{\"a\":1,\"a\":2}", "f.safetensors: header"), "f.safetensors: header",
               "duplicate key \"a\"");
  EXPECT_ERROR(json::parse("[1,2", "ctx"), "ctx: invalid JSON at byte 4");
  CHECK(json::valid_utf8("h\xc3\xa9", 3) && !json::valid_utf8("\xc3", 1));
}

std::vector<tb::Tensor> two_tensors() {
  return {tb::f32("w", {2, 3}, {1, 2, 3, 4, 5, 6}), tb::i32("idx", {0, 2, 5})};
}

tb::Meta task_meta() {
  return {{"format", "spaedge-task"}};
}

void test_good_bundle(const TempDir& d) {
  const std::string p = d.file("good.safetensors");
  tb::write_file(p, tb::bundle(two_tensors(), task_meta()));
  Bundle b(p, "spaedge-task");
  CHECK(b.format() == "spaedge-task");
  CHECK(b.tensors().size() == 2);
  const auto& w = b.tensor("w");
  CHECK(w.dtype == spaedge::DType::F32 && w.shape == std::vector<int64_t>({2, 3}) && w.numel == 6);
  CHECK(w.f32(0) == 1.0f && w.f32(5) == 6.0f);
  const auto& idx = b.tensor("idx");
  CHECK(idx.dtype == spaedge::DType::I32 && idx.i32(2) == 5);
  CHECK(b.meta("version") == "4" && b.content_hash().size() == 64);
  CHECK(b.computed_hash() == b.content_hash() && b.data_loaded());
  // Tensor data is private, 64-byte aligned memory.
  CHECK(reinterpret_cast<uintptr_t>(b.tensors().front().data) % 64 == 0);
  CHECK(b.find("nope") == nullptr);
  EXPECT_ERROR(b.tensor("nope"), p + ": missing tensor 'nope'");
  // U8 (sparse position masks): one byte per element; a tensor after an odd
  // number of U8 bytes is unaligned and still read right (memcpy accessors).
  const std::string pu = d.file("u8.safetensors");
  tb::write_file(pu,
                 tb::bundle({tb::u8("mask", {0x11, 0xff, 0x80}), tb::f32("w", {2}, {1.5f, -2.0f})},
                            task_meta()));
  Bundle bu(pu, "spaedge-task");
  const auto& mask = bu.tensor("mask");
  CHECK(mask.dtype == spaedge::DType::U8 && mask.numel == 3 && mask.end - mask.begin == 3);
  CHECK(mask.u8(0) == 0x11 && mask.u8(2) == 0x80 &&
        std::string(spaedge::dtype_name(mask.dtype)) == "U8");
  CHECK(bu.tensor("w").begin == 3 && bu.tensor("w").f32(1) == -2.0f);
  EXPECT_ERROR(b.meta("graph"), p + ": missing metadata key 'graph'");
  // Either format accepted with "", the other refused.
  Bundle any(p);
  CHECK(any.format() == "spaedge-task");
  EXPECT_ERROR(Bundle(p, "spaedge-base"), p,
               "is a spaedge-task bundle, expected a spaedge-base bundle");

  // A zero-size tensor and an empty data section are legal safetensors.
  const std::string pz = d.file("zero.safetensors");
  tb::write_file(pz, tb::bundle({tb::f32("e", {0, 4}, {})}, task_meta()));
  Bundle z(pz);
  CHECK(z.tensor("e").numel == 0);
  // Unaligned (unpadded) header is still read.
  tb::Meta m = task_meta();
  m.emplace_back("version", "4");
  tb::Layout l0 = tb::layout(two_tensors(), m);
  m.emplace_back("content_hash", tb::content_hash(two_tensors(), m, l0.data));
  tb::Layout l = tb::layout(two_tensors(), m);
  std::string hdr = l.header + " ";
  if (hdr.size() % 8 == 0) hdr += " ";
  std::vector<uint8_t> raw(8);
  for (int i = 0; i < 8; ++i) raw[size_t(i)] = uint8_t(uint64_t(hdr.size()) >> (8 * i));
  raw.insert(raw.end(), hdr.begin(), hdr.end());
  raw.insert(raw.end(), l.data.begin(), l.data.end());
  tb::write_file(d.file("unaligned.safetensors"), raw);
  Bundle u(d.file("unaligned.safetensors"));
  CHECK(u.tensor("w").f32(4) == 5.0f);
  CHECK(reinterpret_cast<uintptr_t>(u.tensor("w").data) % 4 == 0);  // aligned all the same
}

// Writes header text + data with a correct content hash over `data`.
std::vector<uint8_t> with_header(const std::string& header_json, const std::vector<uint8_t>& data) {
  return tb::assemble(header_json, data);
}

// Metadata of a bundle holding one tensor 'w' F32 [3] at [0, 12] (its content
// hash is right for that table; the cases below break something else first).
std::string meta_json(const std::vector<uint8_t>& data, const std::string& fmt = "spaedge-task") {
  const std::string h = tb::content_hash({tb::Tensor{"w", "F32", {3}, data}},
                                         {{"format", fmt}, {"version", "4"}}, data);
  return "\"__metadata__\":{\"format\":\"" + fmt + "\",\"version\":\"4\",\"content_hash\":\"" + h +
         "\"}";
}

void test_truncation(const TempDir& d) {
  const std::vector<uint8_t> good = tb::bundle(two_tensors(), task_meta());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | good[size_t(i)];
  const size_t data_start = 8 + size_t(n);
  struct Cut {
    size_t len;
    const char* needle;
  };
  const std::vector<Cut> cuts = {
      {0, "empty file"},
      {1, "shorter than the 8-byte"},
      {7, "shorter than the 8-byte"},
      {8, "exceeds"},
      {9, "exceeds"},
      {8 + size_t(n) / 2, "exceeds"},
      {data_start - 1, "exceeds"},
      {data_start, "out of range"},       // no data at all
      {data_start + 5, "out of range"},   // inside the first tensor
      {good.size() - 4, "out of range"},  // inside the last tensor
      {good.size() - 1, "out of range"},
  };
  for (const auto& c : cuts) {
    const std::string p = d.file("cut" + std::to_string(c.len) + ".safetensors");
    tb::write_file(p, std::vector<uint8_t>(good.begin(), good.begin() + long(c.len)));
    EXPECT_ERROR(Bundle{p}, p + ": ", c.needle);
  }
  // Extra trailing bytes: belong to no tensor.
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  tb::write_file(d.file("long.safetensors"), longer);
  EXPECT_ERROR(Bundle{d.file("long.safetensors")}, "belong to no tensor");
}

void test_header_length(const TempDir& d) {
  std::vector<uint8_t> good = tb::bundle(two_tensors(), task_meta());
  auto set_len = [&](uint64_t n) {
    std::vector<uint8_t> b = good;
    for (int i = 0; i < 8; ++i) b[size_t(i)] = uint8_t(n >> (8 * i));
    return b;
  };
  const std::string p = d.file("hl.safetensors");
  tb::write_file(p, set_len(uint64_t(1) << 60));
  EXPECT_ERROR(Bundle{p}, p, "header length 1152921504606846976 exceeds");
  tb::write_file(p, set_len(~uint64_t(0)));
  EXPECT_ERROR(Bundle{p}, "header length", "exceeds");
  tb::write_file(p, set_len(0));
  EXPECT_ERROR(Bundle{p}, "header length 0 is too small");
  // Within the file but absurd: over safetensors' limit of 100,000,000 bytes
  // (sparse files, so no disk is used). The limit is checked before the header is read.
  for (uint64_t n : {uint64_t(100000001), uint64_t(101) * 1024 * 1024}) {
    const std::string big = d.file("big.safetensors");
    std::vector<uint8_t> head(8);
    for (int i = 0; i < 8; ++i) head[size_t(i)] = uint8_t(n >> (8 * i));
    head.push_back('{');
    tb::write_file(big, head);
    CHECK(truncate(big.c_str(), off_t(n + 16)) == 0);
    EXPECT_ERROR(Bundle{big}, big + ": header length " + std::to_string(n) +
                                  " is absurd (limit 100000000 bytes");
  }
  {
    // Exactly at the limit: read and parsed (and refused as JSON, not for its length).
    const std::string big = d.file("big.safetensors");
    const uint64_t n = 100000000;
    std::vector<uint8_t> head(8);
    for (int i = 0; i < 8; ++i) head[size_t(i)] = uint8_t(n >> (8 * i));
    head.push_back('{');
    tb::write_file(big, head);
    CHECK(truncate(big.c_str(), off_t(n + 16)) == 0);
    EXPECT_ERROR(Bundle{big}, big + ": header: invalid JSON");
    std::remove(big.c_str());
  }
}

void test_bad_json_and_shape(const TempDir& d) {
  const std::vector<uint8_t> data(12, 0);
  const std::string M = meta_json(data);
  struct Case {
    std::string header;
    std::vector<const char*> needles;
  };
  const std::vector<Case> cases = {
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]",
       {"header: invalid JSON"}},
      {"[1,2,3]", {"does not start with '{'"}},
      {"{" + M + ",\"w\":[1]}", {"tensor 'w': header entry is a array"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F16\",\"shape\":[6],\"data_offsets\":[0,12]}}",
       {"tensor 'w': dtype 'F16' not allowed"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"dtype 'F64' not allowed"}},
      {"{" + M + ",\"w\":{\"dtype\":3,\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"'dtype' is not a string"}},
      {"{" + M + ",\"w\":{\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"tensor 'w': missing 'dtype'"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,12]}}", {"missing 'shape'"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3]}}", {"missing 'data_offsets'"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12],\"x\":1}}",
       {"unknown field 'x'"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,12]}}",
       {"non-negative integers"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,12]}}",
       {"non-negative integers"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,12]}}",
       {"tensor 'w': 'shape' [4] of F32 needs 16 bytes but 'data_offsets' [0, 12] hold 12"}},
      {"{" + M + ",\"w\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"tensor 'w': 'shape' [3] of U8 needs 3 bytes but 'data_offsets' [0, 12] hold 12"}},
      {"{" + M +
           ",\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,12]}}",
       {"tensor 'w'"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}",
       {"tensor 'w': 'data_offsets' [0, 16] out of range: the data section has 12 bytes"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[12,0]}}",
       {"begin after end"}},
      {"{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0]}}",
       {"must be an array [begin, end]"}},
      {"{" + M +
           ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,99999999999999999999]}}",
       {"non-negative integers"}},
      {"{" + M +
           ",\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       {"tensor 'b': 'data_offsets' [4, 12] overlap tensor 'a' [0, 8]"}},
      {"{" + M +
           ",\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
       {"data section bytes [4, 8) belong to no tensor"}},
      {"{" + M + ",\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       {"data section bytes [0, 4) belong to no tensor"}},
      {"{" + M +
           ",\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"duplicate key \"a\""}},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}", {"no '__metadata__'"}},
      {"{\"__metadata__\":[],\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"'__metadata__' is a array"}},
      {"{\"__metadata__\":{\"format\":1},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":["
       "0,12]}}",
       {"metadata 'format' is a number"}},
      {"{\"__metadata__\":{\"version\":\"4\",\"content_hash\":\"" + tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"missing metadata key 'format'"}},
      {"{\"__metadata__\":{\"format\":\"other\",\"version\":\"4\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'format' is 'other'"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"6\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'version' is '6', this runtime reads format versions 4 (fp32) and 5 (int8) "
        "only"}},
      // Version 5 is int8 only, said by 'precision' (docs/int8.md (a)).
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"5\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"missing metadata key 'precision': version 5 is for int8 bundles"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"5\",\"precision\":\"int4\","
       "\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'precision' is 'int4', expected 'int8'"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"4\",\"precision\":\"int8\","
       "\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'precision' is 'int8' in a version 4 bundle"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"4\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"I8\",\"shape\":[12],\"data_offsets\":[0,12]}}",
       {"tensor 'w': dtype 'I8' in a fp32 bundle"}},
      // A version 1 bundle (content hash over the data only): refused, told to repack.
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"1\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'version' is '1': format version 1 is no longer read", "repack",
        "spaedge pack --retrain"}},
      // A version 2 bundle (no adapter rank stored): refused, told to repack.
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"2\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'version' is '2': format version 2 is no longer read", "repack"}},
      // A version 3 bundle (Pear shared adapters only between equal kept shapes): refused.
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"3\",\"content_hash\":\"" +
           tb::sha_hex(data) +
           "\"},\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"metadata 'version' is '3': format version 3 is no longer read", "repack"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"4\"},"
       "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"missing metadata key 'content_hash'"}},
      {"{\"__metadata__\":{\"format\":\"spaedge-task\",\"version\":\"4\",\"content_hash\":\"ABC\"},"
       "\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"'content_hash' is not 64 lowercase hex"}},
      {"{" + M + ",\"\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
       {"empty name"}},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string p = d.file("case" + std::to_string(i++) + ".safetensors");
    tb::write_file(p, with_header(c.header, data));
    std::vector<std::string> needles = {p + ": "};
    for (const char* n : c.needles) needles.push_back(n);
    tcheck::expect_error([&] { Bundle b(p); }, needles, __FILE__, __LINE__);
  }
  // Sanity: the same construction with a good header loads.
  const std::string p = d.file("case_ok.safetensors");
  tb::write_file(
      p, with_header("{" + M + ",\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
                     data));
  Bundle ok(p);
  CHECK(ok.tensor("w").numel == 3);
}

void test_content_hash(const TempDir& d) {
  std::vector<uint8_t> good = tb::bundle(two_tensors(), task_meta());
  for (size_t back : {1u, 5u, 13u, 24u}) {
    std::vector<uint8_t> b = good;
    b[b.size() - back] ^= 0x01;
    const std::string p = d.file("flip" + std::to_string(back) + ".safetensors");
    tb::write_file(p, b);
    EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch", "file corrupted");
  }
  // The hash covers the metadata and the tensor table too: the header
  // rewritten around the same data and the stale hash is refused.
  const tb::Meta meta = {{"format", "spaedge-task"}, {"labels", "[\"1\",\"7\"]"}, {"version", "4"}};
  const std::vector<tb::Tensor> ts = {tb::f32("a", {2}, {1, 2}), tb::f32("b", {2}, {3, 4})};
  const tb::Layout l0 = tb::layout(ts, meta);
  const std::string h = tb::content_hash(ts, meta, l0.data);
  auto stale = [&](const std::vector<tb::Tensor>& tensors, tb::Meta m, const char* file) {
    m.emplace_back("content_hash", h);
    const tb::Layout l = tb::layout(tensors, m);
    const std::string p = d.file(file);
    tb::write_file(p, tb::assemble(l.header, l.data));
    return p;
  };
  Bundle ok(stale(ts, meta, "stale_ok.safetensors"));  // unchanged: loads
  CHECK(ok.content_hash() == h);
  tb::Meta m2 = meta;
  m2[1].second = "[\"7\",\"7\"]";  // same length, one label changed
  std::string p = stale(ts, m2, "stale_label.safetensors");
  EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch",
               "metadata, tensor table and data");
  tb::Meta m3 = meta;
  m3.emplace_back("extra", "");  // a key added
  p = stale(ts, m3, "stale_key.safetensors");
  EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch");
  // Two tensors of one shape swapped: same data section, other names.
  std::vector<tb::Tensor> swapped = {tb::f32("b", {2}, {1, 2}), tb::f32("a", {2}, {3, 4})};
  p = stale(swapped, meta, "stale_swap.safetensors");
  EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch");
  // A shape rewritten ([2] -> [2, 1]), same bytes.
  std::vector<tb::Tensor> reshaped = {tb::f32("a", {2, 1}, {1, 2}), tb::f32("b", {2}, {3, 4})};
  p = stale(reshaped, meta, "stale_shape.safetensors");
  EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch");
}

// docs/format.md's worked example of the canonical hash; tests/pack checks the
// Python writer against the same number.
void test_hash_vector(const TempDir& d) {
  const tb::Meta meta = {
      {"format", "spaedge-task"}, {"version", "4"}, {"labels", "[\"caf\u00e9\",\"7\"]"}};
  const std::vector<tb::Tensor> ts = {tb::f32("w", {2}, {1.0f, -2.0f}), tb::i32("idx", {7})};
  const tb::Layout l = tb::layout(ts, meta);
  const std::string want = "8bcb20783895b8071011eadac298526a091ede4be5594ee26e9ec91c1a880215";
  CHECK_MSG(tb::content_hash(ts, meta, l.data) == want, tb::content_hash(ts, meta, l.data));
  const std::string p = d.file("vector.safetensors");
  tb::write_file(p, tb::bundle(ts, meta));
  Bundle b(p);
  CHECK(b.content_hash() == want && b.meta("labels") == "[\"caf\u00e9\",\"7\"]");
}

// Header only: nothing of the data section is kept; the hash is streamed.
void test_header_only(const TempDir& d) {
  std::vector<uint8_t> good = tb::bundle(two_tensors(), task_meta());
  const std::string p = d.file("header_only.safetensors");
  tb::write_file(p, good);
  spaedge::BundleOptions o;
  o.load_data = false;
  Bundle b(p, "", o);
  CHECK(!b.data_loaded() && b.tensors().size() == 2 && b.tensors()[0].data == nullptr);
  CHECK(b.computed_hash() == b.content_hash() && b.tensor("w").numel == 6);
  good[good.size() - 2] ^= 0x20;
  tb::write_file(p, good);
  EXPECT_ERROR(Bundle(p, "", o), p + ": metadata 'content_hash' mismatch");
  o.verify_hash = false;
  Bundle unchecked(p, "", o);
  CHECK(unchecked.computed_hash().empty() && unchecked.tensors().size() == 2);
}

// A file that changes while it is read (made to happen at the exact moment by
// the testing hook): refused with a message, never a fault.
const std::vector<uint8_t>* g_replacement = nullptr;
void truncate_hook(const std::string& path) {
  CHECK(truncate(path.c_str(), 20) == 0);
}
void overwrite_hook(const std::string& path) {
  tb::write_file(path, *g_replacement);
}

void test_changes_while_reading(const TempDir& d) {
  const std::vector<uint8_t> good = tb::bundle(two_tensors(), task_meta());
  const std::string p = d.file("changing.safetensors");
  tb::write_file(p, good);
  spaedge::testing::bundle_opened = truncate_hook;
  EXPECT_ERROR(Bundle{p}, p + ": file changed while being read: it was " +
                              std::to_string(good.size()) + " bytes when opened and is 20 now");
  // Overwritten in place with the same size, other data: the bytes read no
  // longer hash to what the header says.
  std::vector<uint8_t> other = good;
  other[other.size() - 3] ^= 0x08;
  g_replacement = &other;
  tb::write_file(p, good);
  spaedge::testing::bundle_opened = overwrite_hook;
  EXPECT_ERROR(Bundle{p}, p + ": metadata 'content_hash' mismatch");
  spaedge::testing::bundle_opened = nullptr;
  tb::write_file(p, good);
  Bundle again(p);
  // Once read, the file no longer matters: truncate and overwrite it, the
  // Bundle's tensors are the ones it checked.
  CHECK(truncate(p.c_str(), 0) == 0);
  CHECK(again.tensor("w").f32(5) == 6.0f && again.tensor("idx").i32(2) == 5);
  tb::write_file(p, std::vector<uint8_t>(good.size(), 0xff));
  CHECK(again.tensor("w").f32(0) == 1.0f);
}

void test_not_files(const TempDir& d) {
  EXPECT_ERROR(Bundle{d.path.string()}, d.path.string() + ": is a directory");
  EXPECT_ERROR(Bundle{d.file("missing.safetensors")}, "missing.safetensors: cannot open");
  const std::string fifo = d.file("fifo");
  if (mkfifo(fifo.c_str(), 0600) == 0) EXPECT_ERROR(Bundle{fifo}, fifo + ": is not a regular file");
  EXPECT_ERROR(Bundle{"/dev/null"}, "/dev/null: is not a regular file");
  EXPECT_ERROR(Bundle{"/dev/zero"}, "/dev/zero: is not a regular file");
  // A NUL byte would cut the path (open() reads a C string): refused, shown escaped.
  const std::string good = d.file("nul.safetensors");
  tb::write_file(good, tb::bundle(two_tensors(), task_meta()));
  const std::string cut = good + std::string(1, '\0') + "ignored";
  EXPECT_ERROR(Bundle{cut}, good + "\\x00ignored: path contains a NUL byte");
  const std::string e = d.file("empty.safetensors");
  tb::write_file(e, {});
  EXPECT_ERROR(Bundle{e}, e + ": empty file");
}

}  // namespace

int main() {
  TempDir d;
  test_sha256();
  test_json();
  test_good_bundle(d);
  test_truncation(d);
  test_header_length(d);
  test_bad_json_and_shape(d);
  test_content_hash(d);
  test_hash_vector(d);
  test_header_only(d);
  test_changes_while_reading(d);
  test_not_files(d);
  return tcheck::summary("test_bundle");
}
