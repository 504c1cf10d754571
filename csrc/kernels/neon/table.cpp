// The neon table and CPU check (isas.inc). This folder is built for aarch64
// only, where NEON is mandatory.
#include "kernels/kernels.h"

namespace spaedge::kernels::neon {

bool supported() {
  return true;
}

}  // namespace spaedge::kernels::neon

#define SPAEDGE_TABLE_ISA neon
#include "kernels/isa_table.inc"
