// Host (CPU) build of csrc/*.cu for tests: g++ -O2 -std=c++17 -shared -fPIC csrc/host_shim.cpp -o libsynth_host.so
#define SG_HOST 1
#include "synth_warp.cu"

extern "C" void synth_warp_host(unsigned grid_x, unsigned grid_y, unsigned block_x, SG_WARP_PARAMS, float* pmin,
                                float* pmax) {
    sg_launch(synth_warp_kernel, grid_x, grid_y, block_x, SG_WARP_ARGS, pmin, pmax);
}
