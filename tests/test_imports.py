"""The shape of the package: imports point the way DESIGN.md draws them, and no two modules import each other.

The graph is built statically with `ast` from every module of `corral`, with
the imports inside functions (lazy imports run too, only later) and without
those under `if TYPE_CHECKING:` (they never run). Layers:

    cli      -> anything
    control  -> control, sched, runtime, goodput, errors
    sim      -> sim, sched, goodput, errors
    sched    -> sched, goodput, errors
    runtime  -> runtime, goodput, errors   (the root package `corral` is part of it: it lazily loads the Job API)
    goodput  -> errors   (the model of throughput and statistical efficiency: the scheduler
                          allocates by it, a job with an adaptive batch chooses its batch by it)
    errors   -> nothing

Nothing imports `corral.cli`, and nothing inside the package imports the
root facade `corral` for a name it re-exports (import it from the runtime
module that defines it); `corral.__version__` is the one exception.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "corral"

# layer -> the layers its modules may import
ALLOWED: dict[str, frozenset[str]] = {
    "cli": frozenset({"cli", "control", "sim", "sched", "runtime", "goodput", "errors"}),
    "control": frozenset({"control", "sched", "runtime", "goodput", "errors"}),
    "sim": frozenset({"sim", "sched", "goodput", "errors"}),
    "sched": frozenset({"sched", "goodput", "errors"}),
    "runtime": frozenset({"runtime", "goodput", "errors"}),
    "goodput": frozenset({"goodput", "errors"}),
    "errors": frozenset(),
}
ROOT_NAMES_OK = frozenset({"__version__"})  # what the package itself may take from the root facade


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    line: int
    names: tuple[str, ...] = ()  # for `from X import a, b`: a, b (when X is a module, not a package of them)

    def where(self) -> str:
        return f"{self.src}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or inside functions, except under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(src: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name `from ... import` names, relative imports included."""
    if node.level == 0:
        return node.module or ""
    base = src.split(".") if is_package else src.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def build_graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = _modules()
    edges: list[Edge] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "corral" or alias.name.startswith("corral."):
                        edges.append(Edge(name, alias.name, node.lineno))
                continue
            target = _resolve(name, is_package, node)
            if not (target == "corral" or target.startswith("corral.")):
                continue
            plain: list[str] = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:  # `from corral.runtime import job` imports the module corral.runtime.job
                    edges.append(Edge(name, sub, node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                edges.append(Edge(name, target, node.lineno, tuple(plain)))
    return modules, [e for e in edges if e.src != e.dst]


def layer(module: str) -> str | None:
    if module == "corral":
        return "runtime"  # the root package is the Job API's front door
    parts = module.split(".")
    return {
        "runtime": "runtime",
        "sched": "sched",
        "sim": "sim",
        "control": "control",
        "cli": "cli",
        "errors": "errors",
        "goodput": "goodput",
    }.get(parts[1])


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); every component of more than one module."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        if e.dst in succ and e.dst not in succ[e.src]:
            succ[e.src].append(e.dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            if i < len(succ[node]):
                work.append((node, i + 1))
                nxt = succ[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_in(component: list[str], edges: list[Edge]) -> list[Edge]:
    """One concrete cycle through a component, as the import lines that make it."""
    members = set(component)
    by_src: dict[str, list[Edge]] = {}
    for e in edges:
        if e.src in members and e.dst in members:
            by_src.setdefault(e.src, []).append(e)
    start = component[0]
    # breadth-first from start back to start
    prev: dict[str, Edge] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for e in by_src.get(node, []):
                if e.dst == start:
                    path = [e]
                    cur = node
                    while cur != start:
                        path.append(prev[cur])
                        cur = prev[cur].src
                    return path[::-1]
                if e.dst not in seen:
                    seen.add(e.dst)
                    prev[e.dst] = e
                    nxt_frontier.append(e.dst)
        frontier = nxt_frontier
    return []


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    return build_graph()


def test_the_graph_sees_lazy_imports_and_skips_type_checking(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    modules, edges = graph
    assert "corral.cli" in modules and "corral.sched.types" in modules
    pairs = {(e.src, e.dst) for e in edges}
    assert ("corral.cli", "corral.control.commands") in pairs  # inside _register()
    assert ("corral", "corral.runtime.job") in pairs  # inside __getattr__; the TYPE_CHECKING one is skipped too
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import corral.sim\nimport corral.sched\n"
    tree = ast.parse(source)
    assert [n.names[0].name for n in _imports(tree) if isinstance(n, ast.Import)] == ["corral.sched"]


def test_every_module_belongs_to_a_layer(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    modules, _ = graph
    assert [m for m in modules if layer(m) is None] == []


def test_imports_point_the_way_the_design_draws_them(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    modules, edges = graph
    bad = []
    for e in edges:
        src, dst = layer(e.src), layer(e.dst)
        if src is None or dst is None:
            continue
        if dst not in ALLOWED[src]:
            bad.append(f"{e.where()}: {e.src} ({src}) imports {e.dst} ({dst})")
        elif e.dst == "corral.cli":
            bad.append(f"{e.where()}: {e.src} imports corral.cli; the CLI is the top, nothing imports it")
        elif e.dst == "corral" and set(e.names) - ROOT_NAMES_OK:
            bad.append(
                f"{e.where()}: {e.src} imports {', '.join(e.names)} from the root facade `corral`; "
                "import it from the runtime module that defines it"
            )
    assert not bad, "imports against the design's direction:\n" + "\n".join(bad)


def test_no_import_cycles(graph: tuple[dict[str, Path], list[Edge]]) -> None:
    modules, edges = graph
    components = strongly_connected(sorted(modules), edges)
    report = []
    for comp in components:
        cycle = _cycle_in(comp, edges)
        steps = " -> ".join([cycle[0].src] + [f"{e.dst} ({e.where()})" for e in cycle]) if cycle else ""
        report.append(f"{len(comp)} modules import each other: {', '.join(comp)}\n    e.g. {steps}")
    assert not components, "import cycles:\n" + "\n".join(report)


def test_tarjan_finds_every_cycle_and_nothing_else() -> None:
    edges = [
        Edge(a, b, 1) for a, b in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "a")]
    ]
    comps = strongly_connected(list("abcdef"), edges)
    assert sorted(comps) == [["a", "b", "c"], ["d", "e"]]
    cycle = _cycle_in(["a", "b", "c"], edges)
    assert [(e.src, e.dst) for e in cycle] == [("a", "b"), ("b", "c"), ("c", "a")]


# -- the strategy seam: strategies and their loaders use the Job's public API only ----------------

STRATEGY_MODULES = sorted(
    [*(PACKAGE_DIR / "runtime" / "strategies").glob("*.py"), *(PACKAGE_DIR / "runtime" / "ps").glob("*.py")]
)
JOB_NAMES = frozenset({"job", "_job"})  # how strategies and loaders hold the Job


def _private_job_uses(path: Path) -> list[str]:
    """`job._x` / `self.job._x` / `self._job._x` in a module: a private Job name reached from outside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        holder = node.value
        name = holder.id if isinstance(holder, ast.Name) else holder.attr if isinstance(holder, ast.Attribute) else ""
        if name in JOB_NAMES:
            found.append(f"{path.name}:{node.lineno} {name}.{node.attr}")
    return found


def test_strategies_use_no_private_job_name() -> None:
    assert len(STRATEGY_MODULES) >= 8  # ddp, pipeline, base, optim_state, the ps package
    used = [use for path in STRATEGY_MODULES for use in _private_job_uses(path)]
    assert used == []


def test_the_private_name_check_finds_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(job, self):\n    job._history\n    self.job._loader\n    self._job._micro\n    job.history\n")
    assert _private_job_uses(bad) == ["bad.py:2 job._history", "bad.py:3 job._loader", "bad.py:4 _job._micro"]
