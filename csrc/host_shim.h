// Host build of the CUDA kernels: the same source compiles as plain C++, with the launch grid replaced by a loop
// (no shared memory, no __syncthreads, no warp shuffles: threads run one after the other, so reductions are
// written with #ifdef SG_HOST as plain read-modify-writes).
#pragma once
#include <math.h>
#include <string.h>

// the device's bit casts and integer atomics (threads run one after the other: a read-modify-write is atomic)
static inline int __float_as_int(float v) { int i; memcpy(&i, &v, sizeof i); return i; }
static inline unsigned __float_as_uint(float v) { unsigned u; memcpy(&u, &v, sizeof u); return u; }
static inline float __int_as_float(int i) { float v; memcpy(&v, &i, sizeof v); return v; }
template <class T> static inline T atomicMin(T* a, T v) { T old = *a; if (v < old) *a = v; return old; }
template <class T> static inline T atomicMax(T* a, T v) { T old = *a; if (v > old) *a = v; return old; }

struct sg_dim3 { unsigned x, y, z; };
static thread_local sg_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

// run kernel(args...) for every (block, thread) of a 2D grid of 1D blocks
template <class... P, class... A>
void sg_launch(void (*kernel)(P...), unsigned gx, unsigned gy, unsigned bx, A... args) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, 1, 1};
    for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x)
            for (unsigned t = 0; t < bx; ++t) {
                blockIdx = {x, y, 0};
                threadIdx = {t, 0, 0};
                kernel(args...);
            }
}
