"""Every Triton kernel variant the fast path launches compiles with the real Triton compiler for GPU targets.

The interpreter (tests/test_fast.py, tests/test_triton_kernels.py) checks what the kernels compute; it accepts
code that the compiler rejects. Here each variant (benchmarks/triton_aot.py) is compiled to a cubin for sm_80 and
sm_90 with Triton's own ptxas, no GPU needed, and must not spill registers. Runs in a child process when this
one has the interpreter on.
"""
import os
import subprocess
import sys

import pytest

CHILD = "SYNTHGEN_COMPILE_CHILD"
# kernels are compiled unless TRITON_INTERPRET=1 was set in this process (it stays set once a module sets it)
HERE = os.environ.get(CHILD) == "1" or os.environ.get("TRITON_INTERPRET") != "1"

pytest.importorskip("triton")
from conftest import source_file  # noqa: E402

BENCHMARKS = str(source_file("benchmarks"))      # the tools beside the benchmarks, not in the package


def _aot():
    """benchmarks/triton_aot.py (a tool beside the benchmarks, not in the package)."""
    sys.path.insert(0, BENCHMARKS)
    import triton_aot
    return triton_aot


@pytest.mark.skipif(not HERE, reason="compiled in a child process (this one runs the interpreter)")
def test_every_launched_variant_compiles_for_gpus_without_spills():
    aot = _aot()

    seen = aot.launched_variants()
    names = {key[0] for key in seen}
    assert {"_warp_kernel", "_blur_axis_kernel", "_resample_axis_kernel", "_randn_kernel", "_hist_kernel",
            "_stats_kernel", "_final_kernel"} <= names, names
    for (name, _, _), (kernel, signature, constexprs) in seen.items():
        for arch in (80, 90):
            try:
                compiled = aot.compile_variant(kernel, signature, constexprs, arch)
            except Exception as err:
                pytest.fail(f"{name} {constexprs} does not compile for sm_{arch}: {err}")
            use = aot.resources(compiled)
            assert use["reg"] > 0 and use["stack"] == 0 and use["local"] == 0, (name, constexprs, arch, use)


@pytest.mark.skipif(not HERE, reason="compiled in a child process (this one runs the interpreter)")
def test_kernel_resources_table(tmp_path, capsys):
    import json
    sys.path.insert(0, BENCHMARKS)
    import kernel_resources
    kernel_resources.main(["--arch", "90", "--json", str(tmp_path / "k.json")])
    rows = json.loads((tmp_path / "k.json").read_text())
    warp = [r for r in rows if r["kernel"] == "_warp_kernel"]
    assert warp and all(0 < r["occupancy"] <= 1 and r["reg"] <= 255 for r in rows)
    assert "| _warp_kernel |" in capsys.readouterr().out


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter is off here")
def test_recording_needs_compiled_kernels():
    aot = _aot()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        with aot.record_launches():
            pass


@pytest.mark.skipif(HERE, reason="compiled in this process")
def test_compile_in_a_child_process():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env[CHILD] = "1"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
