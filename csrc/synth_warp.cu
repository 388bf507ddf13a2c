// Fused warp + sampling + GMM + bias + target (+ the image's min/max): the CUDA C++ twin of
// synthgen/kernels/triton_warp.py (same maths, documented there). One thread per output voxel; blockIdx.y is the
// sample. Compiled at run time by CuPy (NVRTC)
// on a CUDA machine, with nvcc -cubin in the tests, and as host C++ through csrc/host_shim.cpp.
#ifdef SG_HOST
#include "host_shim.h"
#endif

// dct2 mirror; B-spline taps only reach -1 .. n + 1
__device__ __forceinline__ int sg_mirror(int i, int n) {
    if (n == 1) return 0;
    if (i < 0) i = -i - 1;
    if (i >= n) i = 2 * n - 1 - i;
    return i;
}

__device__ __forceinline__ void sg_taps(float x, float scale, int n, float w[4], int idx[4]) {
    float xc = x * scale;
    float base = floorf(xc);
    float f = xc - base, g = 1.0f - f;
    w[0] = g * g * g * (1.0f / 6.0f);
    w[1] = 2.0f / 3.0f - f * f + 0.5f * f * f * f;
    w[2] = 2.0f / 3.0f - g * g + 0.5f * g * g * g;
    w[3] = f * f * f * (1.0f / 6.0f);
    int bi = (int)base;
    for (int t = 0; t < 4; ++t) idx[t] = sg_mirror(bi - 1 + t, n);
}

// separable cubic B-spline of C component volumes (n1, n2, n3) at one voxel: 64 taps per component
__device__ __forceinline__ void sg_spline(const float* c, int C, int n1, int n2, int n3, const float* wa,
                                          const int* ia, const float* wb, const int* ib, const float* wc,
                                          const int* ic, float* out) {
    long long nn = (long long)n1 * n2 * n3;
    for (int k = 0; k < C; ++k) out[k] = 0.0f;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
            float wij = wa[i] * wb[j];
            long long row = ((long long)ia[i] * n2 + ib[j]) * n3;
            for (int l = 0; l < 4; ++l) {
                float w = wij * wc[l];
                for (int k = 0; k < C; ++k) out[k] += w * c[k * nn + row + ic[l]];
            }
        }
}

struct sg_corners { long long off[8]; float w[8]; bool in[8]; };

__device__ __forceinline__ void sg_corners_of(float cx, float cy, float cz, int X, int Y, int Z, sg_corners* q) {
    float x0 = floorf(cx), y0 = floorf(cy), z0 = floorf(cz);
    float fx = cx - x0, fy = cy - y0, fz = cz - z0;
    int ix = (int)x0, iy = (int)y0, iz = (int)z0;
    for (int c = 0; c < 8; ++c) {
        int dx = (c >> 2) & 1, dy = (c >> 1) & 1, dz = c & 1;
        int x = ix + dx, y = iy + dy, z = iz + dz;
        q->in[c] = x >= 0 && x < X && y >= 0 && y < Y && z >= 0 && z < Z;
        q->off[c] = q->in[c] ? ((long long)x * Y + y) * Z + z : 0;
        q->w[c] = (dx ? fx : 1.0f - fx) * (dy ? fy : 1.0f - fy) * (dz ? fz : 1.0f - fz);
    }
}

__device__ __forceinline__ float sg_lerp3(const float* v, const sg_corners* q) {
    float s = 0.0f;
    for (int c = 0; c < 8; ++c) if (q->in[c]) s += q->w[c] * v[q->off[c]];
    return s;
}

#define SG_WARP_PARAMS                                                                                      \
    const unsigned char* labels, const float* probs, int K, long long tis_bstride, int X, int Y, int Z,      \
    const float* lesion, long long les_bstride, int LX, int LY, int LZ, int lox, int loy, int loz,           \
    float threshold, const float* matrix, const float* center,                                              \
    const float* elastic, int n1, int n2, int n3, float es1, float es2, float es3,                          \
    const float* bias, int m1, int m2, int m3, float bs1, float bs2, float bs3,                             \
    const float* mu, const float* sigma, int L, const float* texture, const float* tex_scale,               \
    const unsigned char* flip, int D, int H, int W, float* image, unsigned char* target,                    \
    const unsigned char* classes, int lesion_class
#define SG_WARP_ARGS                                                                                        \
    labels, probs, K, tis_bstride, X, Y, Z, lesion, les_bstride, LX, LY, LZ, lox, loy, loz, threshold,      \
    matrix, center, elastic, n1, n2,                                                                        \
    n3, es1, es2, es3, bias, m1, m2, m3, bs1, bs2, bs3, mu, sigma, L, texture, tex_scale, flip, D, H, W,     \
    image, target, classes, lesion_class

#ifdef SG_HOST
#define SG_INF HUGE_VALF
#else
#define SG_INF __int_as_float(0x7f800000)
#endif

// float atomics through the integer order of IEEE floats (non-negative: as int; negative: reversed, as unsigned).
// -0.0 takes the non-negative branch (-0.0 >= 0) but its bits are INT_MIN as an int, below every non-negative
// and every negative float there: it is made +0.0 first. The host build runs the same code (host_shim.h's
// atomics are plain read-modify-writes of one thread at a time).
__device__ __forceinline__ void sg_atomic_min(float* a, float v) {
    if (v == 0.0f) v = 0.0f;
    if (v >= 0.0f) atomicMin((int*)a, __float_as_int(v));
    else atomicMax((unsigned int*)a, __float_as_uint(v));
}

__device__ __forceinline__ void sg_atomic_max(float* a, float v) {
    if (v == 0.0f) v = 0.0f;
    if (v >= 0.0f) atomicMax((int*)a, __float_as_int(v));
    else atomicMin((unsigned int*)a, __float_as_uint(v));
}

// this block's min/max of v into its partial slots (pre-filled with +inf / -inf): a warp reduction, then one
// atomic per warp. Every thread of the block must call it (invalid ones with valid = false).
__device__ __forceinline__ void sg_partial_minmax(float v, bool valid, float* pmin, float* pmax) {
    float lo = valid ? v : SG_INF, hi = valid ? v : -SG_INF;
#ifndef SG_HOST
    for (int s = 16; s > 0; s >>= 1) {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, s));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, s));
    }
    if ((threadIdx.x & 31) != 0) return;
#endif
    sg_atomic_min(pmin, lo);
    sg_atomic_max(pmax, hi);
}

// one output voxel o of sample b: writes its image value and (flipped) target, returns the image value.
// labels != nullptr: nearest label map (1 channel); else probs (K channels). lesion may be nullptr. classes maps
// a label (or the most probable channel) to its target class.
__device__ __forceinline__ float sg_warp_voxel(SG_WARP_PARAMS, long long o, int b) {
    const long long N = (long long)D * H * W;
    const int d = (int)(o / ((long long)H * W)), h = (int)((o / W) % H), w = (int)(o % W);
    const float fd = (float)d, fh = (float)h, fw = (float)w;
    const float od = fd - (D - 1) * 0.5f, oh = fh - (H - 1) * 0.5f, ow = fw - (W - 1) * 0.5f;
    const float* M = matrix + b * 9;
    const float* ctr = center + b * 3;
    float cx = M[0] * od + M[1] * oh + M[2] * ow + ctr[0];
    float cy = M[3] * od + M[4] * oh + M[5] * ow + ctr[1];
    float cz = M[6] * od + M[7] * oh + M[8] * ow + ctr[2];

    float wa[4], wb[4], wc[4], u[3];
    int ia[4], ib[4], ic[4];
    sg_taps(fd, es1, n1, wa, ia);
    sg_taps(fh, es2, n2, wb, ib);
    sg_taps(fw, es3, n3, wc, ic);
    sg_spline(elastic + (long long)b * 3 * n1 * n2 * n3, 3, n1, n2, n3, wa, ia, wb, ib, wc, ic, u);
    cx += u[0]; cy += u[1]; cz += u[2];

    const float* mub = mu + b * L;
    const float* sgb = sigma + b * L;
    float mean, stdv;
    int cls;
    const long long XYZ = (long long)X * Y * Z;
    if (labels) {
        int ix = (int)floorf(cx + 0.5f), iy = (int)floorf(cy + 0.5f), iz = (int)floorf(cz + 0.5f);
        bool in = ix >= 0 && ix < X && iy >= 0 && iy < Y && iz >= 0 && iz < Z;
        int lab = in ? (int)labels[b * tis_bstride + ((long long)ix * Y + iy) * Z + iz] : 0;
        mean = mub[lab];
        stdv = sgb[lab];
        cls = classes[lab];                            // label -> target class
    } else {
        sg_corners q;
        sg_corners_of(cx, cy, cz, X, Y, Z, &q);
        const float* tb = probs + b * tis_bstride;
        float p0 = 0.0f, total = 0.0f, best = -1.0f;
        mean = 0.0f; stdv = 0.0f; cls = 0;
        for (int k = 0; k < K; ++k) {
            float pk = sg_lerp3(tb + k * XYZ, &q);
            total += pk;
            if (k == 0) { p0 = pk; continue; }
            mean += pk * mub[k];
            stdv += pk * sgb[k];
            if (pk > best) { best = pk; cls = k; }     // strict: the first maximum wins, as torch.argmax
        }
        p0 += fmaxf(1.0f - total, 0.0f);               // outside the map is background
        mean += p0 * mub[0];
        stdv += p0 * sgb[0];
        if (p0 >= best) cls = 0;
        cls = classes[cls];                            // channel -> target class
    }
    const float t = texture[(long long)b * N + o] * tex_scale[b];
    float img = mean + stdv * t;
    if (lesion) {        // the weights cover the map box [lo, lo + (LX, LY, LZ)): zero outside, as outside the map
        sg_corners q;
        sg_corners_of(cx - lox, cy - loy, cz - loz, LX, LY, LZ, &q);
        const float* lb = lesion + b * les_bstride;
        float wi = fminf(fmaxf(sg_lerp3(lb, &q), 0.0f), 1.0f);
        float wl = sg_lerp3(lb + (long long)LX * LY * LZ, &q);
        img = img * (1.0f - wi) + (mub[L - 1] + sgb[L - 1] * t) * wi;
        if (wl > threshold) cls = lesion_class;
    }
    if (bias) {
        float f;
        sg_taps(fd, bs1, m1, wa, ia);
        sg_taps(fh, bs2, m2, wb, ib);
        sg_taps(fw, bs3, m3, wc, ic);
        sg_spline(bias + (long long)b * m1 * m2 * m3, 1, m1, m2, m3, wa, ia, wb, ib, wc, ic, &f);
        img *= expf(f);
    }
    image[(long long)b * N + o] = img;
    const unsigned char* fb = flip + b * 3;
    const int td = fb[0] ? D - 1 - d : d, th = fb[1] ? H - 1 - h : h, tw = fb[2] ? W - 1 - w : w;
    target[(long long)b * N + ((long long)td * H + th) * W + tw] = (unsigned char)cls;
    return img;
}

// blockIdx.y is the sample; pmin / pmax (nullable): (B, gridDim.x) per-block partials of the image's range,
// which the gamma stage needs (no separate min/max pass)
extern "C" __global__ void synth_warp_kernel(SG_WARP_PARAMS, float* pmin, float* pmax) {
    const long long N = (long long)D * H * W;
    const int b = blockIdx.y;
    const long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool valid = o < N;
    const float img = valid ? sg_warp_voxel(SG_WARP_ARGS, o, b) : 0.0f;
    if (pmin) {
        const long long slot = (long long)b * gridDim.x + blockIdx.x;
        sg_partial_minmax(img, valid, pmin + slot, pmax + slot);
    }
}
