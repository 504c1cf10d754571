// The scalar table and CPU check (isas.inc): the reference, runs everywhere.
#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

bool supported() {
  return true;
}

}  // namespace spaedge::kernels::scalar

#define SPAEDGE_TABLE_ISA scalar
#include "kernels/isa_table.inc"
