// Every family's per-conv State (one include per line of families.inc).
// Internal header.
#pragma once

#include "runtime/families/dense_delta.h"
#include "runtime/families/family.h"
#include "runtime/families/lowrank.h"
#include "runtime/families/pointwise.h"
#include "runtime/families/prototypes.h"
#include "runtime/families/shared.h"
#include "runtime/families/sparse.h"
