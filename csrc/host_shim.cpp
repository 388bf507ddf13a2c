// Host (CPU) build of csrc/*.cu for tests: g++ -O2 -std=c++17 -shared -fPIC csrc/host_shim.cpp -o libsynth_host.so
#define SG_HOST 1
#include "synth_warp.cu"

extern "C" void synth_warp_host(unsigned grid_x, unsigned grid_y, unsigned block_x, SG_WARP_PARAMS, float* pmin,
                                float* pmax) {
    sg_launch(synth_warp_kernel, grid_x, grid_y, block_x, SG_WARP_ARGS, pmin, pmax);
}

// the float atomics alone: the min and max of v[0 .. n) into *lo / *hi (pre-filled by the caller)
extern "C" void sg_minmax_host(const float* v, int n, float* lo, float* hi) {
    for (int i = 0; i < n; ++i) {
        sg_atomic_min(lo, v[i]);
        sg_atomic_max(hi, v[i]);
    }
}
