// The one dispatch point: walks the ISA list (isas.inc) and picks the table
// that runs. Nothing else in spaedge knows which ISA is active.
#include <cstdlib>
#include <string>
#include <string_view>

#include "kernels/kernels.h"

// The ISAs CMake builds into this binary, comma-separated ("scalar,avx2,...":
// spaedge_kernel_isa in CMakeLists.txt).
#ifndef SPAEDGE_ISAS_BUILT
#error "SPAEDGE_ISAS_BUILT is not defined: build the kernels with CMakeLists.txt"
#endif

namespace spaedge::kernels {

namespace {

constexpr bool built(std::string_view isa) {
  std::string_view list = SPAEDGE_ISAS_BUILT;
  for (;;) {
    const size_t comma = list.find(',');
    if (list.substr(0, comma) == isa) return true;
    if (comma == std::string_view::npos) return false;
    list.remove_prefix(comma + 1);
  }
}

// Each ISA's table and CPU check are referred to only when it is built (a
// discarded `if constexpr` branch needs no definition).
#define SPAEDGE_ISA(name, priority)         \
  [] {                                      \
    Isa i{#name, priority, nullptr, false}; \
    if constexpr (built(#name)) {           \
      i.table = &name::table();             \
      i.supported = name::supported();      \
    }                                       \
    return i;                               \
  }(),

const IsaList& list() {
  static const Isa all[] = {
#include "kernels/isas.inc"
  };
  static const IsaList l{all, int(sizeof all / sizeof all[0])};
  return l;
}
#undef SPAEDGE_ISA

struct Choice {
  const KernelTable* table = nullptr;
  std::string error;
};

Choice choose() {
  Choice c;
  const Isa* best = nullptr;
  for (const Isa& i : isas())
    if (i.supported && (!best || i.priority > best->priority)) best = &i;
  const KernelTable& fallback = scalar::table();

  const char* env = std::getenv("SPAEDGE_ISA");
  if (!env || !*env) {
    c.table = best ? best->table : &fallback;
    return c;
  }
  const std::string want(env);
  const Isa* forced = find_isa(env);
  if (!forced) {
    std::string names;
    for (const Isa& i : isas()) names += (names.empty() ? "" : "|") + std::string(i.name);
    c.error = "SPAEDGE_ISA=" + want + " is not one of " + names + "; using scalar";
    c.table = &fallback;
  } else if (!forced->table) {
    c.error = "SPAEDGE_ISA=" + want + " requested but not compiled into this binary; using scalar";
    c.table = &fallback;
  } else if (!forced->supported) {
    c.error = "SPAEDGE_ISA=" + want + " requested but this CPU/OS cannot run it; using scalar";
    c.table = &fallback;
  } else {
    c.table = forced->table;
  }
  return c;
}

const Choice& choice() {
  static const Choice c = choose();  // thread-safe initialisation (C++11)
  return c;
}

}  // namespace

IsaList isas() {
  return list();
}

const Isa* find_isa(const char* name) {
  for (const Isa& i : isas())
    if (std::string_view(i.name) == name) return &i;
  return nullptr;
}

bool cpu_supports(const KernelTable& table) {
  for (const Isa& i : isas())
    if (i.table == &table) return i.supported;
  return false;
}

const KernelTable& active() {
  return *choice().table;
}

const char* dispatch_error() {
  return choice().error.c_str();
}

}  // namespace spaedge::kernels
