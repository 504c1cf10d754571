// Prototype-set family (SPLoPA, block-SPA): per conv its block coefficients
// C [n, O'/bo, I'/bi]; each prototype set's U [n, bo, r] and V [n, r, bi]
// stored once for every conv using it (metadata 'splopa_sets'). The sum
// sum_p kron(C_p, U_p V_p) is expanded into the centre tap at task
// application (kernels::splopa_expand). Internal header.
#pragma once

#include <vector>

namespace spaedge::families::prototypes {

struct State {
  int n = 0, rank = 0, bo = 1, bi = 1;
  std::vector<float> coef;  // [n, O'/bo, I'/bi]
  std::vector<float> u, v;  // a copy of its set's (a few dozen floats)
};

}  // namespace spaedge::families::prototypes
