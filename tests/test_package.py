"""The package's shape: the wheel ships the CUDA sources, the bundled data and the mappings, and only ``synthgen`` at
the top level; no import circle inside synthgen (the reference pipeline imports neither the generator nor the fast
path); every config dataclass in synthgen/config.py (the training recipe's in synthgen/train/config.py)."""
import ast
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import synthgen
from conftest import SOURCE_TREE

PACKAGE = Path(synthgen.__file__).resolve().parent


# what an installed synthgen needs beside its modules (paths inside the wheel)
SHIPPED = ("synthgen/kernels/csrc/synth_warp.cu", "synthgen/kernels/csrc/host_shim.cpp",
           "synthgen/kernels/csrc/host_shim.h", "synthgen/data/default/mni152_2009a_tissue_labels.nii.gz",
           "synthgen/data/default/LICENSE.txt", "synthgen/data/mappings/freesurfer.json")


def _build_wheel(out: Path) -> Path:
    """A wheel of the checkout, built from a copy of it (the checkout stays clean; a stray package would come too)."""
    src = out / "src"
    shutil.copytree(SOURCE_TREE, src, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", "*.so", "build", "dist", "*.egg-info", ".venv", "runs", ".device", ".hypothesis",
        ".pytest_cache"))
    shutil.rmtree(src / "synthgen" / "kernels" / "csrc", ignore_errors=True)     # a copy an in-place build left
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(out / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (out / "dist").glob("synthgen-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> dict:
    """``{path inside the wheel: text or None}`` of synthgen's wheel: a wheel built from the checkout, or, when the
    suite runs outside it, the installed distribution's own files (its RECORD)."""
    if SOURCE_TREE is None:
        files = metadata.distribution("synthgen").files
        return {str(f): (f.read_text() if f.suffix == ".txt" else None) for f in files if not str(f).startswith("..")}
    with zipfile.ZipFile(_build_wheel(tmp_path_factory.mktemp("wheel"))) as z:
        return {n: (z.read(n).decode() if n.endswith(".txt") else None) for n in z.namelist()}


def _dist_info(files: dict, name: str) -> str:
    (text,) = [v for k, v in files.items() if k.endswith(f".dist-info/{name}")]
    return text


def test_wheel_ships_cuda_sources_data_and_mappings(wheel_files):
    missing = [f for f in SHIPPED if f not in wheel_files]
    if SOURCE_TREE is not None:      # every CUDA source and bundled file of the checkout, not only today's
        missing += [f"synthgen/kernels/csrc/{p.name}" for p in (SOURCE_TREE / "csrc").iterdir()
                    if f"synthgen/kernels/csrc/{p.name}" not in wheel_files]
        for folder in ("default", "mappings"):
            missing += [f"synthgen/data/{folder}/{p.name}" for p in (SOURCE_TREE / "synthgen" / "data" / folder).iterdir()
                        if f"synthgen/data/{folder}/{p.name}" not in wheel_files]
    assert not missing


def test_wheel_has_only_synthgen_at_the_top_level(wheel_files):
    top = {f.split("/")[0] for f in wheel_files if ".dist-info/" not in f and not f.startswith(".")}
    assert top == {"synthgen"}
    assert _dist_info(wheel_files, "top_level.txt").split() == ["synthgen"]


def test_console_scripts_point_into_synthgen(wheel_files):
    text = _dist_info(wheel_files, "entry_points.txt")
    targets = dict(line.replace(" ", "").split("=", 1) for line in text.splitlines() if "=" in line)
    assert {"synthgen-train", "synthgen-predict", "synthgen-evaluate", "synthgen-sample", "synthgen-preview"} <= \
        set(targets)
    assert all(t.startswith("synthgen.") for t in targets.values()), targets


def test_the_cuda_loader_finds_its_source():
    from synthgen.kernels import cuda_loader
    assert cuda_loader.WARP_SOURCE.is_file()
    if SOURCE_TREE is None:          # installed: the copy inside the package, not a checkout's csrc/
        assert cuda_loader.WARP_SOURCE.parent == Path(cuda_loader.__file__).resolve().parent / "csrc"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(name: str, path: Path, modules: set) -> set:
    """The synthgen modules ``name`` imports anywhere in its source (function-level imports too: a lazy import
    hides a circle, it does not break it); ``from pkg import sub`` counts as importing ``pkg.sub``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            if target in modules:
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
    return found - {name}


def import_graph() -> dict:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(name, path, set(paths)) for name, path in paths.items()}


def _circle(graph: dict):
    """One import circle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = "done"
        return None
    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_circle_finder_finds_a_circle():
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_circle_in_synthgen():
    graph = import_graph()
    assert {"synthgen.fast", "synthgen.generator", "synthgen.reference"} <= set(graph)
    assert "synthgen.reference" in graph["synthgen.fast"]        # the graph sees imports inside functions too
    assert _circle(graph) is None, " -> ".join(_circle(graph))


def test_reference_pipeline_imports_neither_generator_nor_fast_path():
    graph = import_graph()
    seen, todo = set(), ["synthgen.reference"]
    while todo:
        for v in graph[todo.pop()] - seen:
            seen.add(v)
            todo.append(v)
    assert not seen & {"synthgen.generator", "synthgen.fast"}


def test_every_config_lives_in_config_py():
    homes = {"synthgen.config", "synthgen.train.config"}
    strays = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name.endswith("Config") and _module_name(path) not in homes:
                strays.append(f"{_module_name(path)}.{node.name}")
    assert not strays


def test_histogram_config_still_importable_from_real():
    from synthgen import config, real
    assert real.HistogramConfig is config.HistogramConfig
