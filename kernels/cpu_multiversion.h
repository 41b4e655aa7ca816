// Hand-written CPU loops in kernels/ (internal): the library is built for a baseline x86-64, and these
// loops get AVX2 and AVX-512 clones picked at load time (GCC function multiversioning), so the rest of the
// build stays portable.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LINEARIZE_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LINEARIZE_MULTIVERSION
#endif
#define LINEARIZE_INLINE inline __attribute__((always_inline))
