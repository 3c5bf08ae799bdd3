"""The package's shape, checked from its source (ast, nothing imported): no import cycle, no module
reaching into another's private names, no heavy library imported at module level anywhere the CLI
or the device-side bench reaches, and no module that grew into the place everything goes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgedistill"
HEAVY = ("torch", "transformers", "peft", "accelerate", "optimum", "onnx", "onnxruntime",
         "onnxruntime_genai", "llama_cpp", "matplotlib", "gguf", "tokenizers", "safetensors")
# what `edgedistill --help` and the device-side runner (`python -m edgedistill.bench`) import
LIGHT_ROOTS = ("edgedistill.cli", "edgedistill.bench.__main__", "edgedistill.bench.device",
               "edgedistill.bench.measure", "edgedistill.runtimes")
MAX_LINES = 400


def _name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(), str(p)) for name, p in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, top_level_only: bool) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for each import statement."""
    tree = TREES[module]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((_resolve(module, node), [a.name for a in node.names], node.lineno))
        elif top_level_only and isinstance(node, ast.If):  # `if TYPE_CHECKING:` imports only type
            continue
    return out


def _internal(target: str, names: list[str]) -> list[str]:
    """The edgedistill modules an import statement loads (``from pkg import submodule`` too)."""
    if not target.startswith("edgedistill"):
        return []
    out = [target] if target in MODULES else []
    out += [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {m: {t for target, names, _ in _imports(m, top_level_only) for t in _internal(target, names)
                if t != m} for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert _cycles(_graph(top_level_only=True)) == []
    # lazy (function-level) imports too, except a package reaching its own submodules (registries)
    graph = {m: {t for t in deps if not t.startswith(m + ".")} for m, deps in _graph(False).items()}
    assert _cycles(graph) == []


def test_no_cross_module_private_import():
    bad = []
    for module in MODULES:
        for target, names, line in _imports(module, top_level_only=False):
            if target.startswith("edgedistill") and target != module:
                bad += [f"{module}:{line} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
        modules_here = {a.asname or a.name for node in ast.walk(TREES[module])
                        if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names
                        if isinstance(node, ast.ImportFrom) and (_resolve(module, node) + "." + a.name) in MODULES}
        for node in ast.walk(TREES[module]):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules_here and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert bad == []


def _light_closure() -> set[str]:
    graph = _graph(top_level_only=True)
    seen: set[str] = set()
    todo = [m for m in MODULES if any(m == r or m.startswith(r + ".") for r in LIGHT_ROOTS)]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")  # importing a module runs its packages' __init__ first
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        todo += list(graph[m])
    return seen


def test_no_heavy_import_where_cli_or_device_bench_reaches():
    reached = _light_closure()
    assert {"edgedistill.cli", "edgedistill.runtimes.llama_cpp", "edgedistill.bench.measure"} <= reached
    bad = [f"{m}:{line} imports {target} at module level"
           for m in sorted(reached) for target, _, line in _imports(m, top_level_only=True)
           if target.split(".")[0] in HEAVY]
    assert bad == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines; split it (limit {MAX_LINES})"


def test_packages_say_what_they_own():
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "edgedistill":
            assert ast.get_docstring(TREES[name]), f"{path} has no docstring saying what it owns"


def test_the_registry_is_the_only_list_of_stages_and_formats():
    """Literal lists of the stage names or the format names appear only in registry.py."""
    stages = ("generate", "train", "merge", "export", "quantize", "eval", "judge", "bench", "report")
    formats = ("onnx", "ortgenai", "gguf")
    bad = []
    for name, tree in TREES.items():
        if name == "edgedistill.registry":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = tuple(e.value for e in node.elts if isinstance(e, ast.Constant))
                if set(values) >= set(stages) or (len(values) == 3 and set(values) == set(formats)):
                    bad.append(f"{name}:{node.lineno}: {values}")
    assert bad == []
