"""The package's layout by stage: imports point one way, from the command line down to
the specifications, and no module imports itself through a circle (a lazy import
inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fidoperf"

# Lower stages first; a module may import from its own stage or any stage below it.
# measure and whatif are siblings: neither may import the other.
STAGE_RANK = {
    "errors": 0,
    "specs": 1,
    "costmodel": 2,
    "measure": 3,
    "whatif": 3,
    "present": 4,
    "cli": 5,
    "sweep": 5,  # the compatibility path fidoperf.sweep -> fidoperf.whatif.sweep
    "__main__": 6,
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports (any import statement, at any depth)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    root_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    root_name = node.module or ""
                targets = [root_name] + [f"{root_name}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges[mod] |= {t for t in targets if t in files and t not in (mod, "fidoperf")}
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def stage(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, f"modules import each other in a circle: {cycles}"


def test_imports_point_down_the_stages():
    wrong = []
    for mod, targets in import_graph().items():
        if stage(mod) == "__init__":
            continue  # the top-level API imports lazily, by name
        for t in targets:
            a, b = STAGE_RANK[stage(mod)], STAGE_RANK[stage(t)]
            if b > a or (a == b == 3 and stage(mod) != stage(t)):
                wrong.append(f"{mod} -> {t}")
    assert not wrong, "imports against the stage order: " + ", ".join(sorted(wrong))


def test_every_module_belongs_to_a_stage():
    stages = {stage(m) for m in import_graph()}
    assert stages - set(STAGE_RANK) <= {"__init__"}, sorted(stages - set(STAGE_RANK))


def test_the_circle_check_catches_a_circle(tmp_path):
    pkg = tmp_path / "fidoperf"
    (pkg / "specs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "specs" / "__init__.py").write_text("")
    (pkg / "specs" / "a.py").write_text("from .b import x\n")
    (pkg / "specs" / "b.py").write_text("def f():\n    from . import a\n")
    assert find_cycles(import_graph(pkg)) == [["fidoperf.specs.a", "fidoperf.specs.b"]]


@pytest.mark.parametrize("path", ["fidoperf.sweep", "fidoperf.whatif.sweep"])
def test_the_readme_sweep_import_works(path):
    import importlib

    mod = importlib.import_module(path)
    assert callable(mod.sweep) and callable(mod.parse_vary)


def test_the_public_api_docstring_runs():
    """Every example line of fidoperf's docstring (the one list of the public API) runs
    as written, and every name it lists is exported."""
    import fidoperf as fp

    lines = [ln.strip() for ln in fp.__doc__.splitlines() if ln.startswith("    ") and ("fp." in ln or "import" in ln)]
    code = "\n".join(ln.split("  #")[0].rstrip() for ln in lines)
    assert "fp.simulate(" in code and "fp.plan(" in code and "fp.op_table(" in code
    namespace = {"fp": fp}
    exec(compile("import fidoperf as fp\n" + code.replace("import fidoperf as fp\n", ""), "fidoperf docstring", "exec"),
         namespace)
    assert namespace["p"].totals["time_per_sample_s"] > 0
    for name in fp.__all__:
        assert getattr(fp, name) is not None, name
