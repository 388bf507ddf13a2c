"""Every Triton kernel variant the fast path launches compiles with the real Triton compiler for GPU targets.

The interpreter (tests/test_fast.py, tests/test_triton_kernels.py) checks what the kernels compute; it accepts
code that the compiler rejects. Here the fast path runs on CPU tensors with launches recorded instead of run,
and each distinct (kernel, argument types, constexprs) is compiled ahead of time to a cubin for sm_80 and sm_90
(Triton's own ptxas; no GPU needed). Runs in a child process when this one has the interpreter on.
"""
import contextlib
import inspect
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

CHILD = "SYNTHGEN_COMPILE_CHILD"
TARGETS = (80, 90)
_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8",
          torch.int32: "i32", torch.int64: "i64", torch.bool: "i1"}


def _compiled_here() -> bool:
    return os.environ.get(CHILD) == "1" or (os.environ.get("TRITON_INTERPRET") != "1" and "triton" not in sys.modules)


HERE = _compiled_here()


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
def recorded_launches():
    """Record ``(kernel, signature, constexprs)`` of every launch instead of running it."""
    from triton.runtime.jit import JITFunction
    seen = {}

    def run(self, *args, grid, warmup, **kwargs):
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        const = {p.name for p in self.params if p.is_constexpr}
        signature = {k: ("constexpr" if k in const else _type(v)) for k, v in bound.arguments.items()}
        constexprs = tuple(sorted((k, v) for k, v in bound.arguments.items() if k in const))
        seen[(self.fn.__module__, self.fn.__name__, tuple(signature.items()), constexprs)] = (self, signature)

    original = JITFunction.run
    JITFunction.run = run
    try:
        yield seen
    finally:
        JITFunction.run = original


def _variants():
    """Launch the fast path over the configurations that select different kernel variants."""
    import synthgen
    from synthgen import fast
    from synthgen.config import AnisotropyConfig, GeneratorConfig, MotionBlurConfig, NoiseConfig, SmoothConfig
    from conftest import phantom_labels

    labels = phantom_labels((13, 12, 14))
    probs = torch.nn.functional.one_hot(labels[:, 0].long(), 6).permute(0, 4, 1, 2, 3).float()
    lesion = (torch.rand(2, 1, 13, 12, 14), torch.rand(2, 1, 13, 12, 14))
    every = dict(motion=MotionBlurConfig(probability=1.0), anisotropy=AnisotropyConfig(probability=1.0),
                 smooth=SmoothConfig(probability=1.0))
    none = dict(motion=MotionBlurConfig(probability=0.0), anisotropy=AnisotropyConfig(probability=0.0),
                smooth=SmoothConfig(probability=0.0))
    cases = [(labels, None, dict(every)), (probs, lesion, dict(every, target="lesion")),
             (labels, lesion, dict(none, noise=NoiseConfig(kind="gaussian"), work_dtype="float16")),
             (probs, None, dict(every, work_dtype="float16"))]
    with recorded_launches() as seen:
        for tissue, les, kw in cases:
            cfg = GeneratorConfig(crop=(9, 10, 11), **kw).validate()
            params = synthgen.SynthGenerator(cfg).sample_params(tissue.shape, seed=0, batch=2)
            for clip_levels in (1, 2):
                fast.generate_fast(cfg, tissue, params, les, "triton", clip_levels=clip_levels,
                                   out_dtype=torch.bfloat16 if clip_levels == 1 else torch.float32)
            given = torch.randn(2, 1, *cfg.crop)
            fast.generate_fast(cfg, tissue, params, les, "triton", texture=given, noise=(given, given))
    return seen


@pytest.mark.skipif(not HERE, reason="compiled in a child process (this one runs the interpreter)")
def test_every_launched_variant_compiles_for_gpus():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    seen = _variants()
    names = {k[1] for k in seen}
    assert {"_warp_kernel", "_blur_axis_kernel", "_resample_axis_kernel", "_randn_kernel", "_hist_kernel",
            "_stats_kernel", "_final_kernel"} <= names, names
    for (module, name, signature, constexprs), (kernel, sig) in seen.items():
        for arch in TARGETS:
            src = ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs))
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32))
            except Exception as err:
                pytest.fail(f"{module}.{name} {dict(constexprs)} does not compile for sm_{arch}: {err}")
            assert compiled.asm["cubin"], (name, arch)


@pytest.mark.skipif(HERE, reason="compiled in this process")
def test_compile_in_a_child_process():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[CHILD] = "1"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
