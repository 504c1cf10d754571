// The C++ tests' one check helper (no third-party code): every check counts
// as passed or failed, a failure prints one line and the test goes on, and
// summary() prints the closing line "NAME: N passed, M failed" and returns
// the exit code.
#pragma once

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "spaedge/error.h"

namespace tcheck {

inline int g_passed = 0, g_failed = 0;

// Counts `ok`; a failure prints "FAIL [file:line: ]what".
inline void check(bool ok, const std::string& what, const char* file = nullptr, int line = 0) {
  if (ok) {
    ++g_passed;
    return;
  }
  ++g_failed;
  if (file)
    std::printf("FAIL %s:%d: %s\n", file, line, what.c_str());
  else
    std::printf("FAIL %s\n", what.c_str());
}
#define CHECK(cond) tcheck::check(bool(cond), #cond, __FILE__, __LINE__)
#define CHECK_MSG(cond, msg) \
  tcheck::check(bool(cond), std::string(#cond) + " -- " + (msg), __FILE__, __LINE__)

// Runs f, expects a spaedge::Error whose message contains every needle.
inline void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles,
                         const char* file, int line) {
  try {
    f();
  } catch (const spaedge::Error& e) {
    std::string msg = e.what();
    for (const auto& n : needles) {
      if (msg.find(n) == std::string::npos) {
        check(false, "error message lacks '" + n + "': " + msg, file, line);
        return;
      }
    }
    check(true, "", file, line);
    return;
  } catch (const std::exception& e) {
    check(false, std::string("wrong exception type: ") + e.what(), file, line);
    return;
  }
  check(false, "no error thrown (wanted: " + (needles.empty() ? std::string() : needles[0]) + ")",
        file, line);
}
#define EXPECT_ERROR(expr, ...) \
  tcheck::expect_error([&] { expr; }, {__VA_ARGS__}, __FILE__, __LINE__)

// The closing line; the exit code (0: nothing failed).
inline int summary(const char* name) {
  std::printf("%s: %d passed, %d failed\n", name, g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}

}  // namespace tcheck
