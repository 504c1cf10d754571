// The one dispatch point: assembles the per-ISA tables and picks the one that
// runs. Nothing else in spaedge knows which ISA is active.
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/kernels.h"
#include "kernels/scalar/scalar.h"
#if defined(SPAEDGE_HAVE_AVX2)
#include "kernels/avx2/avx2.h"
#endif
#if defined(SPAEDGE_HAVE_AVX512)
#include "kernels/avx512/avx512.h"
#endif
#if defined(SPAEDGE_HAVE_NEON)
#include "kernels/neon/neon.h"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define SPAEDGE_X86_64 1
#endif

namespace spaedge::kernels {

const KernelTable& scalar_table() {
    static const KernelTable t = {
        "scalar",
        scalar::conv_packed_floats,
        scalar::conv_pack,
        scalar::conv_scratch_floats,
        scalar::conv,
        scalar::maxpool,
        scalar::global_avgpool,
        scalar::linear,
        scalar::lowrank_merge,
        scalar::conv_lowrank_packed_floats,
        scalar::conv_lowrank_pack,
        scalar::conv_lowrank_scratch_floats,
        scalar::conv_lowrank,
        scalar::conv_apply,
        scalar::conv_apply_oihw,
    };
    return t;
}

#define SPAEDGE_TABLE(ns)                                                                   \
    {                                                                                       \
        #ns, ns::conv_packed_floats, ns::conv_pack, ns::conv_scratch_floats, ns::conv,      \
            ns::maxpool, ns::global_avgpool, ns::linear, ns::lowrank_merge,                 \
            ns::conv_lowrank_packed_floats, ns::conv_lowrank_pack,                          \
            ns::conv_lowrank_scratch_floats, ns::conv_lowrank, ns::conv_apply,              \
            ns::conv_apply_oihw,                                                            \
    }

const KernelTable* avx2_table() {
#if defined(SPAEDGE_HAVE_AVX2)
    static const KernelTable t = SPAEDGE_TABLE(avx2);
    return &t;
#else
    return nullptr;
#endif
}

// AVX-512 convolutions; everything else (and the packed layout: panels of 16
// output channels, packed by avx2::conv_pack / conv_apply) is the AVX2 code.
const KernelTable* avx512_table() {
#if defined(SPAEDGE_HAVE_AVX512) && defined(SPAEDGE_HAVE_AVX2)
    static const KernelTable t = {
        "avx512",
        avx512::conv_packed_floats,
        avx2::conv_pack,
        avx512::conv_scratch_floats,
        avx512::conv,
        avx2::maxpool,
        avx2::global_avgpool,
        avx2::linear,
        avx2::lowrank_merge,
        avx512::conv_lowrank_packed_floats,
        avx2::conv_lowrank_pack,
        avx512::conv_lowrank_scratch_floats,
        avx512::conv_lowrank,
        avx2::conv_apply,
        avx2::conv_apply_oihw,
    };
    return &t;
#else
    return nullptr;
#endif
}

const KernelTable* neon_table() {
#if defined(SPAEDGE_HAVE_NEON)
    static const KernelTable t = SPAEDGE_TABLE(neon);
    return &t;
#else
    return nullptr;
#endif
}

namespace {

#ifdef SPAEDGE_X86_64
unsigned long long read_xcr0() {
    unsigned int eax = 0, edx = 0;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

bool cpu_has_avx2_fma() {
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const bool fma = ecx & (1u << 12);
    const bool osxsave = ecx & (1u << 27);
    const bool avx = ecx & (1u << 28);
    if (!(fma && osxsave && avx)) return false;
    // The OS must save/restore XMM (bit 1) and YMM (bit 2) state.
    if ((read_xcr0() & 0x6) != 0x6) return false;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    return ebx & (1u << 5);  // AVX2
}

bool cpu_has_avx512f() {
    if (!cpu_has_avx2_fma()) return false;
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!(ebx & (1u << 16))) return false;  // AVX512F
    // The OS must also save/restore opmask (bit 5), ZMM0-15 upper halves (6)
    // and ZMM16-31 (7).
    return (read_xcr0() & 0xE6) == 0xE6;
}
#endif

struct Choice {
    const KernelTable* table = nullptr;
    std::string error;
};

Choice choose() {
    Choice c;
    const KernelTable* best = &scalar_table();
    if (const KernelTable* t = avx2_table(); t && cpu_supports(*t)) best = t;
    if (const KernelTable* t = avx512_table(); t && cpu_supports(*t)) best = t;
    if (const KernelTable* t = neon_table(); t && cpu_supports(*t)) best = t;

    const char* env = std::getenv("SPAEDGE_ISA");
    if (!env || !*env) {
        c.table = best;
        return c;
    }
    const std::string want(env);
    const KernelTable* forced = nullptr;
    if (want == "scalar") {
        forced = &scalar_table();
    } else if (want == "avx2") {
        forced = avx2_table();
    } else if (want == "avx512") {
        forced = avx512_table();
    } else if (want == "neon") {
        forced = neon_table();
    } else {
        c.error = "SPAEDGE_ISA=" + want + " is not one of scalar|avx2|avx512|neon; using scalar";
        c.table = &scalar_table();
        return c;
    }
    if (!forced) {
        c.error = "SPAEDGE_ISA=" + want + " requested but not compiled into this binary; using scalar";
        c.table = &scalar_table();
    } else if (!cpu_supports(*forced)) {
        c.error = "SPAEDGE_ISA=" + want + " requested but this CPU/OS cannot run it; using scalar";
        c.table = &scalar_table();
    } else {
        c.table = forced;
    }
    return c;
}

const Choice& choice() {
    static const Choice c = choose();  // thread-safe initialisation (C++11)
    return c;
}

}  // namespace

bool cpu_supports(const KernelTable& table) {
    if (&table == &scalar_table()) return true;
#ifdef SPAEDGE_X86_64
    if (std::strcmp(table.isa, "avx2") == 0) {
        static const bool ok = cpu_has_avx2_fma();
        return ok;
    }
    if (std::strcmp(table.isa, "avx512") == 0) {
        static const bool ok = cpu_has_avx512f();
        return ok;
    }
#endif
#if defined(__aarch64__)
    if (std::strcmp(table.isa, "neon") == 0) return true;  // NEON is mandatory on AArch64
#endif
    return false;
}

const KernelTable& active() { return *choice().table; }

const char* dispatch_error() { return choice().error.c_str(); }

}  // namespace spaedge::kernels
