"""The package's shape, read from its imports with ``ast`` (docs/architecture.md).

Every ``import`` in ``clipindex/`` is read, at module level and inside functions alike
(a lazy import still makes a dependency), and the rules of docs/architecture.md are
checked: arrows point down the pipeline only, no cycle, the "nevers", FAISS in one
module, nobody's private names imported from another package, and the size limits.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clipindex"

# The pipeline's floors: a module may import from its own package (unit) and from units
# on a lower floor, never from one on its own floor or above. Units are packages
# (``clipindex/store``) or the top-level modules; a two-part key (``pkg.module``) would
# put one module of a package on another floor (none does today).
FLOORS: dict[str, float] = {
    "errors": 0,
    "files": 0.5,  # atomic writes raise errors' ResourceError
    "checks": 0.5,  # the shared checks of a caller's values raise errors' UserInputError
    "progress": 0,
    "config": 1,
    "metrics": 1,
    "tiny": 1,  # registry, configs, tokenizer, shipped weights
    "sources": 2,
    "encode": 3,
    "index": 3.5,  # FAISS and top-k: below the store, which holds the files
    "store": 4,
    "classifiers": 5,
    "search": 5,
    "audit": 5.5,  # label audit: above classifiers and search, below bench
    "serve": 6,  # the HTTP service: above search and classifiers, below the CLI
    "explain": 6,
    "bench": 6,
    "report": 7,
    "demo": 8,  # world generator, tiny training/evaluation, the demo run: nothing imports it
    "cli": 9,
}
TOP_LEVEL = {"__init__"}  # clipindex/__init__.py: lazy re-exports of the public API


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import statement."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, list[str], int]] = []
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, [a.name for a in node.names], node.lineno))
    return out


def _unit(module: str) -> str:
    """The floor-table key of a ``clipindex.*`` module name."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__"
    if len(parts) >= 2 and ".".join(parts[:2]) in FLOORS:
        return ".".join(parts[:2])
    return parts[0]


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The clipindex modules an import statement really loads."""
    if not target.startswith("clipindex"):
        return []
    found = [target] if target in modules else []
    for n in names:  # ``from clipindex.store import indexes`` loads a submodule
        if f"{target}.{n}" in modules:
            found.append(f"{target}.{n}")
    return found or [target]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for target, names, _ in _imports(path, mod):
            for dep in _resolve(target, names, modules):
                if dep != mod:
                    graph[mod].add(dep)
    return graph


def test_every_module_has_a_floor() -> None:
    units = {_unit(m) for m in _modules()}
    missing = sorted(units - set(FLOORS) - TOP_LEVEL)
    assert not missing, f"add these to FLOORS and docs/architecture.md: {missing}"


def test_imports_point_down_the_pipeline() -> None:
    breaches = []
    for mod, deps in _graph().items():
        here = _unit(mod)
        if here in TOP_LEVEL:
            continue
        for dep in deps:
            there = _unit(dep)
            if dep.split(".")[:2] == mod.split(".")[:2] or there not in FLOORS:
                continue
            if FLOORS[there] >= FLOORS[here]:
                breaches.append(f"{mod} -> {dep}")
    assert not breaches, "imports that point up or sideways:\n" + "\n".join(sorted(breaches))


def test_no_import_cycle() -> None:
    graph = _graph()
    # Packages import their own submodules from __init__; a package's submodules importing
    # the package's __init__ is no cycle of concepts, so look at units, not modules.
    unit_graph: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph.items():
        for dep in deps:
            if _unit(mod) != _unit(dep) and _unit(mod) not in TOP_LEVEL:
                unit_graph[_unit(mod)].add(_unit(dep))
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(unit_graph.get(node, ())):
            if seen.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in seen and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        seen[node] = 2
        return None

    for start in sorted(unit_graph):
        if start not in seen and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def _importers_of(predicate) -> list[str]:  # noqa: ANN001
    out = []
    for mod, path in _modules().items():
        for target, names, line in _imports(path, mod):
            if predicate(mod, target, names):
                out.append(f"{mod}:{line} imports {target}")
    return out


def test_library_never_imports_cli_benchmarks_or_tests() -> None:
    bad = _importers_of(
        lambda mod, target, names: (
            (target.startswith("clipindex.cli") and not mod.startswith("clipindex.cli"))
            or target.split(".")[0] in {"benchmarks", "tests", "conftest"}
            or target.startswith("fixtures_")
        )
    )
    assert not bad, "\n".join(bad)


def test_only_the_index_package_imports_faiss() -> None:
    bad = _importers_of(
        lambda mod, target, names: target.split(".")[0] == "faiss"
        and not mod.startswith("clipindex.index.")
    )
    assert not bad, "\n".join(bad)
    importers = {mod for mod, path in _modules().items()
                 for target, _, _ in _imports(path, mod) if target.split(".")[0] == "faiss"}
    assert importers and all(m.startswith("clipindex.index.") for m in importers)


def test_classifiers_and_search_take_top_k_from_the_index_package() -> None:
    """Top-k is ``clipindex.index``'s: the store's old FAISS, tuning and rescoring
    modules are gone, the index package imports nothing of the store (it is the floor
    below), and search's ranking and the classifiers' k-NN import it."""
    gone = [m for m in _modules() if m in {"clipindex.store.indexes", "clipindex.store.tuning",
                                           "clipindex.store.torchsearch"}]
    assert not gone, gone
    bad = _importers_of(
        lambda mod, target, names: (mod.startswith("clipindex.index")
                                    and target.startswith("clipindex.store"))
    )
    assert not bad, "\n".join(bad)
    users = {mod for mod, path in _modules().items() for target, _, _ in _imports(path, mod)
             if target.startswith("clipindex.index")}
    assert "clipindex.search.ranking" in users and "clipindex.classifiers.knn" in users


def test_store_never_imports_classifiers_or_search() -> None:
    bad = _importers_of(
        lambda mod, target, names: mod.startswith("clipindex.store")
        and target.startswith(("clipindex.classifiers", "clipindex.search"))
    )
    assert not bad, "\n".join(bad)


_DECODING = ("clipindex.encode.decode", "clipindex.encode.encoder", "torchvision.io",
             "cv2", "imageio")
_NO_DECODING = ("clipindex.classifiers", "clipindex.search", "clipindex.report")


def test_classifiers_search_and_report_never_decode_images() -> None:
    """Decoding lives in ``clipindex.encode``: query images go through its public
    ``encode_query_images``, report thumbnails through its ``load_rgb``; these packages
    neither import its decoding modules nor open image files with PIL themselves (the
    report still uses PIL to *draw* its PNGs)."""
    bad = _importers_of(
        lambda mod, target, names: mod.startswith(_NO_DECODING)
        and (target.startswith(_DECODING) or (target == "clipindex.encode"
                                              and {"decode", "encoder"} & set(names)))
    )
    for mod, path in _modules().items():
        if mod.startswith(_NO_DECODING):
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if "Image.open(" in line:
                    bad.append(f"{mod}:{i} opens an image with PIL")
    assert not bad, "\n".join(bad)


_NOT_PRODUCT = {"demo", "cli", *TOP_LEVEL}  # the demo, and what may reach it (lazily)


def test_the_product_path_never_imports_the_demo() -> None:
    """World generator, tiny training and the demo run live in ``demo/``; nothing on the
    product path (tiny's registry included) imports any of it."""
    bad = _importers_of(
        lambda mod, target, names: _unit(mod) not in _NOT_PRODUCT
        and (target == "clipindex.demo" or target.startswith("clipindex.demo."))
    )
    assert not bad, "\n".join(bad)


def test_demo_package_holds_the_world_and_tiny_keeps_no_training() -> None:
    modules = _modules()
    assert "clipindex.demo.world" in modules and "clipindex.demo.train" in modules
    assert not [m for m in modules if m.startswith("clipindex.world")]
    assert sorted(m for m in modules if m.startswith("clipindex.tiny")) == [
        "clipindex.tiny", "clipindex.tiny.configs", "clipindex.tiny.tokenizer"]


def test_loading_a_tiny_backbone_loads_no_demo_module() -> None:
    code = (
        "import sys, clipindex.encode as e\n"
        "enc = e.load_encoder('tiny-vit', device='cpu')\n"
        "enc.encode_texts(['a photo of a cat'])\n"
        "bad = sorted(m for m in sys.modules if m.startswith('clipindex.demo'))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_imports_another_packages_private_names() -> None:
    def private(mod: str, target: str, names: list[str]) -> bool:
        if not target.startswith("clipindex") or target.split(".")[:2] == mod.split(".")[:2]:
            return False  # inside one package, private helpers are shared freely
        hidden = [n for n in names if n.startswith("_") and n != "__version__"]
        private_module = any(p.startswith("_") for p in target.split(".")[1:])
        return bool(hidden) or private_module

    bad = _importers_of(private)
    assert not bad, "\n".join(bad)


MAX_MODULE_LINES = 600  # #37: room to keep doctests; split by concept, not by count
MAX_FUNCTION_LINES = 60  # body lines, docstring excluded
LONG_OK = "long because"  # a function's docstring may say why it is longer


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant
    ) and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for mod, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            too_long.append(f"{mod}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _body_lines(node)
                doc = ast.get_docstring(node) or ""
                if lines > MAX_FUNCTION_LINES and LONG_OK not in doc.lower():
                    too_long.append(f"{mod}.{node.name}: {lines} body lines")
    assert not too_long, "\n".join(too_long)
