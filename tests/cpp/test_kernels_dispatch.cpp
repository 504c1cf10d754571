// Dispatch: the scalar table is always supported, every compiled-in table is
// bound by name with every kernel of kernels.inc set, and the active table is
// one this CPU runs.
#include "kernel_check.h"

int main() {
  tested_tables();
  report(k::cpu_supports(k::scalar::table()), "dispatch: scalar always supported");
  for (const k::Isa& i : k::isas()) {
    if (!i.table) continue;
    // Bound by name (kernels/isa_table.inc): the table is its row's, every field set.
    report(std::strcmp(i.table->isa, i.name) == 0,
           std::string("table of ") + i.name + " is named " + i.table->isa);
#define SPAEDGE_KERNEL(kernel, ret, params) \
  report(i.table->kernel != nullptr, std::string("table of ") + i.name + " binds " #kernel);
#include "kernels/kernels.inc"
#undef SPAEDGE_KERNEL
  }
  report(k::cpu_supports(k::active()), "dispatch: active table is supported");
  return tcheck::summary("kernels_dispatch");
}
