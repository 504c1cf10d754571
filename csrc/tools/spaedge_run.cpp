// spaedge-run: the device CLI. Loads a base and a task bundle, classifies
// inputs, optionally benchmarks. No Python. Every error is one line on stderr
// and exit code 2.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "spaedge/runtime.h"

namespace {

const char* kUsage =
    "usage: spaedge-run BASE TASK INPUT... [--threads N] [--top K] [--bench N] [--mode M]\n"
    "\n"
    "Classify INPUTs with task bundle TASK applied to base bundle BASE.\n"
    "\n"
    "  BASE         base bundle (.safetensors, format spaedge-base)\n"
    "  TASK         task bundle packed against BASE (format spaedge-task)\n"
    "  INPUT        a .npy float32 array (C,H,W) or (N,C,H,W), NCHW, already\n"
    "               normalised with the task's mean/std; or a binary PGM (P5,\n"
    "               1 channel) / PPM (P6, 3 channels) image of exactly the task's\n"
    "               input size, normalised here with the task's mean/std\n"
    "\n"
    "options:\n"
    "  --threads N  kernel threads (default 0 = all hardware threads)\n"
    "  --top K      print the K best classes per image (default 5)\n"
    "  --bench N    time N runs of the first INPUT and N task switches; print\n"
    "               median and p90 milliseconds\n"
    "  --mode M     merged (default: adapters merged into the weights at switch\n"
    "               time) or lowrank (conv + B'(A' x_centre) fused in one pass)\n"
    "  -h, --help   show this help\n"
    "\n"
    "Scores are the raw logits and their softmax probabilities. Exit code 0 on\n"
    "success, 2 on any error (one line on stderr).\n";

struct UsageError {
  std::string msg;
};

struct Input {
  std::string name;         // file, plus [i] for batches
  std::vector<float> data;  // NCHW, normalised
  int batch = 0;
};

long parse_int(const std::string& opt, const std::string& v, long lo, long hi) {
  if (v.empty()) throw UsageError{opt + " needs an integer value"};
  size_t i = 0;
  long x = 0;
  for (; i < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9')
      throw UsageError{opt + ": '" + v + "' is not a non-negative integer"};
    x = x * 10 + (v[i] - '0');
    if (x > hi) break;
  }
  if (x < lo || x > hi)
    throw UsageError{opt + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "], got " + v};
  return x;
}

std::vector<unsigned char> read_file(const std::string& path, size_t limit) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0)
    throw spaedge::Error(path + ": cannot open: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw spaedge::Error(path + ": is a directory, not an input file");
  if (!S_ISREG(st.st_mode)) throw spaedge::Error(path + ": is not a regular file");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw spaedge::Error(path + ": cannot open");
  f.seekg(0, std::ios::end);
  std::streamoff size = f.tellg();
  if (size < 0) throw spaedge::Error(path + ": cannot read (not a regular file?)");
  if (size_t(size) > limit)
    throw spaedge::Error(path + ": " + std::to_string(size) +
                         " bytes is larger than an input of this task can be (" +
                         std::to_string(limit) + ")");
  f.seekg(0, std::ios::beg);
  std::vector<unsigned char> buf(static_cast<size_t>(size));
  if (size > 0 && !f.read(reinterpret_cast<char*>(buf.data()), size))
    throw spaedge::Error(path + ": read failed");
  return buf;
}

// ---- .npy --------------------------------------------------------------------
// Header: magic "\x93NUMPY", major, minor, header length (2 or 4 bytes LE),
// then a Python dict literal: {'descr': '<f4', 'fortran_order': False, 'shape': (3, 32, 32), }
// It is parsed as a dict (keys, then values), never searched for substrings:
// exactly the keys descr, fortran_order and shape, each once.
std::map<std::string, std::string> npy_header(const std::string& hdr, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return spaedge::Error(path + ": malformed .npy header (" + why + ")");
  };
  size_t i = 0;
  auto ws = [&] {
    while (i < hdr.size() && (hdr[i] == ' ' || hdr[i] == '\t' || hdr[i] == '\n')) ++i;
  };
  auto quoted = [&]() -> std::string {
    const char q = hdr[i];
    const size_t e = hdr.find(q, i + 1);
    if (e == std::string::npos) throw bad("unterminated string");
    std::string v = hdr.substr(i + 1, e - i - 1);
    if (v.find('\\') != std::string::npos) throw bad("escaped string");
    i = e + 1;
    return v;
  };
  std::map<std::string, std::string> out;
  ws();
  if (i >= hdr.size() || hdr[i] != '{') throw bad("no '{'");
  ++i;
  for (;;) {
    ws();
    if (i >= hdr.size()) throw bad("no '}'");
    if (hdr[i] == '}') break;
    if (hdr[i] != '\'' && hdr[i] != '"') throw bad("a key is not a string");
    const std::string key = quoted();
    if (key != "descr" && key != "fortran_order" && key != "shape")
      throw bad("unexpected key '" + key + "'");
    if (out.count(key)) throw bad("key '" + key + "' twice");
    ws();
    if (i >= hdr.size() || hdr[i] != ':') throw bad("no ':' after '" + key + "'");
    ++i;
    ws();
    if (i >= hdr.size()) throw bad("no value for '" + key + "'");
    std::string v;
    if (hdr[i] == '\'' || hdr[i] == '"') {
      v = quoted();
    } else if (hdr[i] == '(') {
      const size_t e = hdr.find(')', i);
      if (e == std::string::npos) throw bad("unterminated tuple");
      v = hdr.substr(i, e - i + 1);
      if (v.find_first_of("('\"", 1) != std::string::npos) throw bad("nested tuple");
      i = e + 1;
    } else {
      const size_t e = hdr.find_first_of(",} \t\n", i);
      if (e == std::string::npos) throw bad("unterminated value");
      v = hdr.substr(i, e - i);
      i = e;
    }
    out[key] = v;
    ws();
    if (i < hdr.size() && hdr[i] == ',')
      ++i;
    else if (i >= hdr.size() || hdr[i] != '}')
      throw bad("no ',' after '" + key + "'");
  }
  ++i;
  ws();
  if (i != hdr.size()) throw bad("text after '}'");
  for (const char* k : {"descr", "fortran_order", "shape"})
    if (!out.count(k)) throw spaedge::Error(path + ": .npy header has no '" + k + "'");
  return out;
}

// ---- output ---------------------------------------------------------------------
// Text from a bundle or the command line, written so a terminal cannot act on
// it, as `spaedge info` writes it: controls (C0, DEL, C1), format and bidi
// characters, line/paragraph separators, private use, noncharacters and bytes
// that are not UTF-8 become \xNN, \uNNNN or \UNNNNNNNN.
bool unsafe_code_point(uint32_t c) {
  return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0xad || (c >= 0x600 && c <= 0x605) ||
         c == 0x61c || c == 0x6dd || c == 0x70f || c == 0x180e || (c >= 0x200b && c <= 0x200f) ||
         (c >= 0x2028 && c <= 0x202e) || (c >= 0x2060 && c <= 0x206f) || c == 0xfeff ||
         (c >= 0xfff9 && c <= 0xfffb) || (c >= 0xd800 && c <= 0xdfff) ||
         (c >= 0xe000 && c <= 0xf8ff) || (c & 0xfffe) == 0xfffe || (c >= 0xfdd0 && c <= 0xfdef) ||
         c == 0x110bd || c == 0x110cd || (c >= 0x1bca0 && c <= 0x1bca3) ||
         (c >= 0x1d173 && c <= 0x1d17a) || c == 0xe0001 || (c >= 0xe0020 && c <= 0xe007f) ||
         c >= 0xf0000;
}

std::string escaped(const std::string& s) {
  std::string out;
  char buf[16];
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b0 = static_cast<unsigned char>(s[i]);
    size_t len = b0 < 0x80 ? 1 : (b0 >> 5) == 6 ? 2 : (b0 >> 4) == 14 ? 3 : (b0 >> 3) == 30 ? 4 : 0;
    uint32_t c = len == 1 ? b0 : len == 2 ? (b0 & 0x1f) : len == 3 ? (b0 & 0x0f) : (b0 & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char bk = static_cast<unsigned char>(s[i + k]);
      if ((bk >> 6) != 2) ok = false;
      c = (c << 6) | (bk & 0x3f);
    }
    static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok && (c < kMin[len] || c > 0x10ffff)) ok = false;  // overlong or out of range
    if (!ok) {
      std::snprintf(buf, sizeof buf, "\\x%02x", b0);
      out += buf;
      ++i;
      continue;
    }
    if (unsafe_code_point(c)) {
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", unsigned(c));
      else if (c < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", unsigned(c));
      out += buf;
    } else {
      out.append(s, i, len);
    }
    i += len;
  }
  return out;
}

Input load_npy(const std::string& path, const std::vector<unsigned char>& buf,
               const spaedge::TaskInfo& t) {
  if (buf.size() < 10) throw spaedge::Error(path + ": truncated .npy file");
  const int major = buf[6];
  size_t hlen, start;
  if (major == 1) {
    hlen = size_t(buf[8]) | (size_t(buf[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (buf.size() < 12) throw spaedge::Error(path + ": truncated .npy file");
    hlen =
        size_t(buf[8]) | (size_t(buf[9]) << 8) | (size_t(buf[10]) << 16) | (size_t(buf[11]) << 24);
    start = 12;
  } else {
    throw spaedge::Error(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (hlen > buf.size() - start) throw spaedge::Error(path + ": truncated .npy header");
  std::string hdr(buf.begin() + long(start), buf.begin() + long(start + hlen));
  const std::map<std::string, std::string> fields = npy_header(hdr, path);
  const std::string& descr = fields.at("descr");
  if (descr != "<f4" && descr != "|f4")
    throw spaedge::Error(path + ": .npy dtype is '" + descr +
                         "', expected float32 ('<f4'); save with x.astype(np.float32)");
  if (fields.at("fortran_order") != "False")
    throw spaedge::Error(path + ": .npy is Fortran-ordered; save a C-contiguous array");
  const std::string& shape = fields.at("shape");
  std::vector<long> dims;
  {
    long cur = -1;
    for (char c : shape) {
      if (c >= '0' && c <= '9') {
        cur = (cur < 0 ? 0 : cur) * 10 + (c - '0');
        if (cur > (1L << 30)) throw spaedge::Error(path + ": .npy shape " + shape + " is absurd");
      } else if (c == ',' || c == ')') {
        if (cur >= 0) dims.push_back(cur);
        cur = -1;
      } else if (c != '(' && c != ' ' && c != 'L') {
        throw spaedge::Error(path + ": malformed .npy shape " + shape);
      }
    }
  }
  const std::string want = "(" + std::to_string(t.channels) + ", " + std::to_string(t.height) +
                           ", " + std::to_string(t.width) + ") or (N, " +
                           std::to_string(t.channels) + ", " + std::to_string(t.height) + ", " +
                           std::to_string(t.width) + ")";
  long n = 1;
  size_t d0 = 0;
  if (dims.size() == 4) {
    n = dims[0];
    d0 = 1;
  } else if (dims.size() != 3) {
    throw spaedge::Error(path + ": .npy shape " + shape + ", task '" + t.name + "' needs NCHW " +
                         want);
  }
  if (dims[d0] != t.channels || dims[d0 + 1] != t.height || dims[d0 + 2] != t.width)
    throw spaedge::Error(path + ": .npy shape " + shape + ", task '" + t.name + "' needs NCHW " +
                         want);
  if (n < 1) throw spaedge::Error(path + ": .npy batch is empty");
  const size_t floats = size_t(n) * size_t(t.channels) * size_t(t.height) * size_t(t.width);
  const size_t data_start = start + hlen;
  if (buf.size() - data_start != floats * 4)
    throw spaedge::Error(path + ": .npy holds " + std::to_string(buf.size() - data_start) +
                         " data bytes, shape " + shape + " needs " + std::to_string(floats * 4));
  Input in;
  in.name = path;
  in.batch = int(n);
  in.data.resize(floats);
  std::memcpy(in.data.data(), buf.data() + data_start, floats * 4);
  for (size_t i = 0; i < floats; ++i)
    if (!std::isfinite(in.data[i]))
      throw spaedge::Error(path + ": element " + std::to_string(i) + " is NaN or Inf");
  return in;
}

// ---- PGM / PPM -----------------------------------------------------------------
Input load_pnm(const std::string& path, const std::vector<unsigned char>& buf,
               const spaedge::TaskInfo& t) {
  const int channels = buf[1] == '5' ? 1 : 3;
  size_t pos = 2;
  auto next_int = [&](const char* what) -> long {
    // whitespace and comments
    for (;;) {
      while (pos < buf.size() && std::strchr(" \t\r\n", buf[pos]) && buf[pos]) ++pos;
      if (pos < buf.size() && buf[pos] == '#') {
        while (pos < buf.size() && buf[pos] != '\n') ++pos;
        continue;
      }
      break;
    }
    if (pos >= buf.size() || buf[pos] < '0' || buf[pos] > '9')
      throw spaedge::Error(path + ": malformed PGM/PPM header (" + what + ")");
    long v = 0;
    while (pos < buf.size() && buf[pos] >= '0' && buf[pos] <= '9') {
      v = v * 10 + (buf[pos] - '0');
      if (v > 1000000) throw spaedge::Error(path + ": PGM/PPM " + what + " is absurd");
      ++pos;
    }
    return v;
  };
  const long w = next_int("width"), h = next_int("height"), maxval = next_int("maxval");
  if (pos >= buf.size()) throw spaedge::Error(path + ": truncated PGM/PPM (no pixel data)");
  ++pos;  // the single whitespace byte after maxval
  if (maxval < 1 || maxval > 65535)
    throw spaedge::Error(path + ": PGM/PPM maxval must be 1..65535");
  if (channels != t.channels)
    throw spaedge::Error(path + ": " + (channels == 1 ? "PGM (1 channel)" : "PPM (3 channels)") +
                         " but task '" + t.name + "' takes " + std::to_string(t.channels) +
                         " channels");
  if (w != t.width || h != t.height)
    throw spaedge::Error(path + ": image is " + std::to_string(w) + "x" + std::to_string(h) +
                         ", task '" + t.name + "' takes exactly " + std::to_string(t.width) + "x" +
                         std::to_string(t.height) + " (width x height); resize it first");
  const size_t bps = maxval > 255 ? 2 : 1;
  const size_t px = size_t(w) * size_t(h);
  const size_t need = px * size_t(channels) * bps;
  if (buf.size() - pos < need)
    throw spaedge::Error(path + ": truncated PGM/PPM: " + std::to_string(buf.size() - pos) +
                         " pixel bytes, need " + std::to_string(need));
  Input in;
  in.name = path;
  in.batch = 1;
  in.data.resize(px * size_t(channels));
  for (size_t i = 0; i < px; ++i) {
    for (int c = 0; c < channels; ++c) {
      const size_t k = (i * size_t(channels) + size_t(c)) * bps;
      unsigned v = bps == 2 ? (unsigned(buf[pos + k]) << 8) | buf[pos + k + 1] : buf[pos + k];
      if (long(v) > maxval)
        throw spaedge::Error(path + ": PGM/PPM sample " +
                             std::to_string(i * size_t(channels) + size_t(c)) + " is " +
                             std::to_string(v) + ", above maxval " + std::to_string(maxval) +
                             " (a corrupt or mislabelled image)");
      float f = float(v) / float(maxval);
      in.data[size_t(c) * px + i] = (f - t.mean[size_t(c)]) / t.std[size_t(c)];
    }
  }
  return in;
}

Input load_input(const std::string& path, const spaedge::TaskInfo& t) {
  const size_t one = size_t(t.channels) * size_t(t.height) * size_t(t.width);
  const size_t limit = std::max<size_t>(one * 4 * 4096 + 4096, 1 << 20);
  std::vector<unsigned char> buf = read_file(path, limit);
  if (buf.size() >= 6 && std::memcmp(buf.data(), "\x93NUMPY", 6) == 0)
    return load_npy(path, buf, t);
  if (buf.size() >= 2 && buf[0] == 'P' && (buf[1] == '5' || buf[1] == '6'))
    return load_pnm(path, buf, t);
  if (buf.empty()) throw spaedge::Error(path + ": empty file");
  throw spaedge::Error(path + ": not a .npy file or a binary PGM/PPM (P5/P6) image");
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0;
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

int run(int argc, char** argv) {
  std::vector<std::string> pos;
  long threads = 0, top = 5, bench = 0;
  std::string mode = "merged";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (a.rfind("--", 0) == 0) {
      std::string key = a, val;
      size_t eq = a.find('=');
      if (eq != std::string::npos) {
        key = a.substr(0, eq);
        val = a.substr(eq + 1);
      } else if (key == "--threads" || key == "--top" || key == "--bench" || key == "--mode") {
        if (i + 1 >= argc) throw UsageError{key + " needs a value"};
        val = argv[++i];
      }
      if (key == "--threads")
        threads = parse_int(key, val, 0, 1024);
      else if (key == "--top")
        top = parse_int(key, val, 1, 1000000);
      else if (key == "--bench")
        bench = parse_int(key, val, 1, 10000000);
      else if (key == "--mode") {
        if (val != "merged" && val != "lowrank")
          throw UsageError{"--mode must be merged or lowrank, got '" + val + "'"};
        mode = val;
      } else
        throw UsageError{"unknown option " + key + " (see --help)"};
      continue;
    }
    pos.push_back(a);
  }
  if (pos.size() < 3) throw UsageError{"expected BASE TASK INPUT... (see --help)"};

  spaedge::Runtime rt(pos[0], int(threads));
  rt.set_mode(mode);
  const std::string note = rt.isa_note();
  if (!note.empty()) std::fprintf(stderr, "spaedge-run: warning: %s\n", note.c_str());
  const std::string name = rt.load_task(pos[1]);
  const spaedge::TaskInfo t = rt.task_info(name);

  std::vector<Input> inputs;
  for (size_t i = 2; i < pos.size(); ++i) inputs.push_back(load_input(pos[i], t));

  const size_t classes = size_t(t.classes);
  const size_t k = std::min<size_t>(size_t(top), classes);
  std::vector<float> logits;
  for (const Input& in : inputs) {
    logits.assign(size_t(in.batch) * classes, 0.0f);
    rt.run(in.data.data(), in.data.size(), in.batch, logits.data(), logits.size());
    for (int b = 0; b < in.batch; ++b) {
      const float* row = logits.data() + size_t(b) * classes;
      std::vector<size_t> order(classes);
      for (size_t c = 0; c < classes; ++c) order[c] = c;
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t x, size_t y) { return row[x] > row[y]; });
      const float mx = row[order[0]];
      double z = 0;
      for (size_t c = 0; c < classes; ++c) z += std::exp(double(row[c] - mx));
      if (in.batch > 1)
        std::printf("%s[%d]:\n", escaped(in.name).c_str(), b);
      else
        std::printf("%s:\n", escaped(in.name).c_str());
      for (size_t r = 0; r < k; ++r) {
        const size_t c = order[r];
        std::printf("  %zu. %-20s logit %10.4f  p %.4f\n", r + 1, escaped(t.labels[c]).c_str(),
                    double(row[c]), std::exp(double(row[c] - mx)) / z);
      }
    }
  }

  if (bench > 0) {
    const Input& in = inputs[0];
    logits.assign(size_t(in.batch) * classes, 0.0f);
    rt.run(in.data.data(), in.data.size(), in.batch, logits.data(), logits.size());  // warm-up
    std::vector<double> ms;
    ms.reserve(size_t(bench));
    for (long i = 0; i < bench; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      rt.run(in.data.data(), in.data.size(), in.batch, logits.data(), logits.size());
      auto t1 = std::chrono::steady_clock::now();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::vector<double> sw;
    const long switches = std::min<long>(bench, 1000);
    for (long i = 0; i < switches; ++i) sw.push_back(rt.switch_to(name));
    std::printf(
        "bench: task %s, base %s, isa %s, threads %d, mode %s, batch %d, input %dx%dx%d, "
        "%.1f MMAC/image\n",
        name.c_str(), rt.base_model().c_str(), rt.isa().c_str(), rt.threads(), rt.mode().c_str(),
        in.batch, t.channels, t.height, t.width, double(t.macs) / 1e6);
    std::printf("  run:    %ld runs, median %.3f ms, p90 %.3f ms\n", bench, percentile(ms, 0.5),
                percentile(ms, 0.9));
    std::printf("  switch: %ld switches, median %.3f ms, p90 %.3f ms (task bundle %zu bytes)\n",
                switches, percentile(sw, 0.5), percentile(sw, 0.9), t.bundle_bytes);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "spaedge-run: error: %s\n", e.msg.c_str());
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "spaedge-run: error: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "spaedge-run: error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "spaedge-run: error: unexpected failure\n");
  }
  return 2;
}
