"""The package's shape: no import circle inside synthgen (the reference pipeline imports neither the generator nor
the fast path); every config dataclass in synthgen/config.py (the training recipe's in synthgen/train/config.py)."""
import ast
from pathlib import Path

import synthgen

PACKAGE = Path(synthgen.__file__).resolve().parent


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
