"""Fast paths (Triton, CUDA C++) of the synthesis pipeline; composed by :mod:`synthgen.fast`.

Nothing here imports triton or cupy at package import: ``triton_*`` modules import triton when loaded, and
:mod:`synthgen.kernels.cuda_loader` imports cupy only when a CUDA kernel is first launched.
"""
