"""Ahead-of-time compilation of the fast path's Triton kernels for GPU targets, on a machine without a GPU.

:func:`launched_variants` runs :func:`synthgen.fast.generate_fast` on CPU tensors over configurations that
select every kernel variant, recording each launch (kernel, argument types, constexprs) instead of running it;
:func:`compile_variant` compiles one for an ``sm_XX`` target with Triton's own ptxas, and :func:`resources`
reads registers, stack (spills) and shared memory from the cubin. Used by tests/test_triton_compile.py and
benchmarks/kernel_resources.py: a tool beside the benchmarks, not part of the runtime package (it drives
synthgen.fast from outside). Needs Triton without ``TRITON_INTERPRET=1`` (the interpreter replaces the kernels
before they can be compiled).
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import subprocess
import tempfile

import torch

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
          torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


def _type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


@contextlib.contextmanager
def record_launches():
    """Within the block Triton launches are recorded, not run: yields ``{key: (kernel, signature, constexprs)}``
    with ``key = (kernel name, signature items, constexpr items)``."""
    from triton.runtime.jit import JITFunction

    from synthgen.kernels.triton_warp import _warp_kernel
    if not isinstance(_warp_kernel, JITFunction):
        raise RuntimeError("Triton kernels cannot be compiled with TRITON_INTERPRET=1 (they are interpreted)")
    seen = {}

    def run(self, *args, grid, warmup, **kwargs):
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        const = {p.name for p in self.params if p.is_constexpr}
        signature = {k: ("constexpr" if k in const else _type(v)) for k, v in bound.arguments.items()}
        constexprs = {k: v for k, v in bound.arguments.items() if k in const}
        key = (self.fn.__name__, tuple(signature.items()), tuple(sorted(constexprs.items())))
        seen[key] = (self, signature, constexprs)

    original = JITFunction.run
    JITFunction.run = run
    try:
        yield seen
    finally:
        JITFunction.run = original


def launched_variants() -> dict:
    """Every kernel variant the fast path launches, over label / probability maps, lesions, Rician / Gaussian
    noise, tissue / lesion targets, float32 / float16 work volumes, 1 / 2 clip levels, image dtypes, and
    Philox / given noise."""
    from synthgen import fast
    from synthgen.config import AnisotropyConfig, GeneratorConfig, MotionBlurConfig, NoiseConfig, SmoothConfig
    from synthgen.sampling import sample_params

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (1, 1, 13, 12, 14), generator=g, dtype=torch.uint8)
    probs = torch.nn.functional.one_hot(labels[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    lesion = (torch.rand(2, 1, 13, 12, 14, generator=g), torch.rand(2, 1, 13, 12, 14, generator=g))
    every = dict(motion=MotionBlurConfig(probability=1.0), anisotropy=AnisotropyConfig(probability=1.0),
                 smooth=SmoothConfig(probability=1.0))
    none = dict(motion=MotionBlurConfig(probability=0.0), anisotropy=AnisotropyConfig(probability=0.0),
                smooth=SmoothConfig(probability=0.0))
    cases = [(labels, None, dict(every)), (probs, lesion, dict(every, target="lesion")),
             (labels, lesion, dict(none, noise=NoiseConfig(kind="gaussian"), work_dtype="float16")),
             (probs, None, dict(every, work_dtype="float16"))]
    with record_launches() as seen:
        for tissue, les, kw in cases:
            cfg = GeneratorConfig(crop=(9, 10, 11), **kw).validate()
            params = sample_params(cfg, tuple(tissue.shape[2:]), 0, 0, 2)
            for clip_levels, image_dtype in ((1, "bfloat16"), (2, "float32"), (2, "float16")):
                fast.generate_fast(dataclasses.replace(cfg, image_dtype=image_dtype), tissue, params, les, "triton",
                                   clip_levels=clip_levels)
            given = torch.randn(2, 1, *cfg.crop, generator=g)
            fast.generate_fast(cfg, tissue, params, les, "triton", texture=given, noise=(given, given))
    return seen


def compile_variant(kernel, signature: dict, constexprs: dict, arch: int = 90):
    """Compile one recorded variant for ``sm_<arch>``; returns Triton's CompiledKernel (``.asm["cubin"]``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    return triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                          target=GPUTarget("cuda", arch, 32))


def resources(compiled) -> dict:
    """Registers per thread, stack bytes (spills) and static shared memory of a compiled kernel, read from its
    cubin with the cuobjdump that ships with Triton; plus the warps per program."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    return dict(usage, warps=compiled.metadata.num_warps)
