"""The layout's rules, checked on the code: who may import whom, and what the serving image loads."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "routers", "ensembles")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Project modules a file imports, lazy imports inside functions included; `if TYPE_CHECKING:` ones not."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {name: {dep for dep in imports_of(path) if dep in modules and dep != name} for name, path in modules.items()}


def test_libraries_never_import_the_gateway() -> None:
    offenders = {module_name(p): sorted(m for m in imports_of(p) if m.split(".")[0] == "gateway")
                 for pkg in ("routers", "ensembles") for p in (ROOT / pkg).rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


WEB_FRAMEWORKS = ("starlette", "fastapi")
"""Where the request and response types live: the HTTP layer's, which the batch worker has no use for."""


@cache
def every_import(path: Path) -> frozenset[str]:
    """Every module a file's import statements name, project or not: inside functions and `if TYPE_CHECKING:`
    blocks too, each `from X import Y` as X and X.Y (Y may be a module). Cached: the walk reads a file once per run."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(part for part in (base, node.module or "") if part)
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return frozenset(found)


def reach(start: str) -> dict[str, str | None]:
    """Every module `import start` can load, following every import statement of the project's modules and the
    package `__init__` each import runs: module -> the project module that imports it (None for `start`)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    via: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        name = todo.pop()
        for found in sorted(every_import(files[name])):
            parts = found.split(".")
            for n in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                dep = ".".join(parts[:n])
                if dep not in via and (dep in files or parts[0] not in PACKAGES):
                    via[dep] = name
                    if dep in files:
                        todo.append(dep)
    return via


def chain(via: dict[str, str | None], module: str) -> str:
    steps = [module]
    while (parent := via[steps[-1]]) is not None:
        steps.append(parent)
    return " <- ".join(steps)


def test_the_batch_worker_reaches_no_web_framework() -> None:
    """The batch worker's side of gateway/batches/ runs the completion service and writes its answer as a line: it
    reaches (transitively, lazy imports and package `__init__` files included) no module that imports Starlette's or
    FastAPI's request or response types, and none of either framework is loaded with it."""
    worker_side = [module_name(p) for p in (ROOT / "gateway" / "batches").glob("*.py") if p.stem != "routes"]
    assert "gateway.completions.service" in reach("gateway.batches.worker")  # the walk follows what the worker runs
    for start in worker_side:
        via = reach(start)
        offenders = [chain(via, m) for m in via if m.split(".")[0] in WEB_FRAMEWORKS]
        assert offenders == [], start
    assert loaded_modules("import gateway.batches.worker, gateway.batches.service", "starlette") == []
    assert loaded_modules("import gateway.batches.worker, gateway.batches.service", "fastapi") == []


def test_serving_package_loads_no_tool_dependencies() -> None:
    """The serving image installs neither the `tools` nor the `litellm` extra: the app must not need them."""
    code = ("import sys, gateway.app, gateway.cli; "
            "print(sorted(m for m in ('matplotlib', 'tqdm', 'openai', 'litellm', 'pandas', 'crowdkit', 'sklearn') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_tests_read_nothing_outside_the_repository() -> None:
    """A clone anywhere runs every tier: data a test needs is bundled (issue 23: the real tier read ../shared)."""
    outside = re.compile(r"ROOT\.parent\b|parents\[[3-9]\]|\.\./shared")
    offenders = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "tests").rglob("*.py") if path != Path(__file__)
                 for n, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert offenders == []


def loaded_modules(code: str, prefix: str) -> list[str]:
    """The project modules under `prefix` that running `code` in a fresh interpreter has loaded (every import,
    transitive and lazy ones that ran included: what the process really pays for)."""
    probe = f"import sys; {code}; print(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return ast.literal_eval(out.stdout.strip())


def test_the_routers_load_no_aggregator() -> None:
    """Routing a request needs one log-odds formula (ensembles/odds.py), not the refit's aggregators."""
    assert loaded_modules("import routers", "ensembles.") == ["ensembles.odds"]


def test_serve_loads_no_tool_and_a_tool_loads_only_itself() -> None:
    """`crowd-gateway serve` builds its command line without importing any tool module; `annotate` imports its own
    module and what it uses, not the other tools."""
    build = "from gateway.cli import build_parser; build_parser({!r})"
    assert loaded_modules(build.format("serve") + "; import gateway.app", "gateway.tools.") == []
    annotate = loaded_modules(build.format("annotate"), "gateway.tools.")
    assert "gateway.tools.annotate" in annotate
    assert not {"gateway.tools.tune", "gateway.tools.pool", "gateway.tools.evaluate", "gateway.tools.demo"} & set(annotate)


def test_asking_a_worker_loads_no_aggregator_and_the_transport_knows_no_prompt() -> None:
    """Asking one member (gateway/asking/: prompt, request, reply read as a vote) neither plans waves nor aggregates:
    it loads no aggregator and not the annotator; the transport under it (gateway/upstream/) imports nothing of it."""
    asker = "import gateway.asking.asker"
    assert loaded_modules(asker, "ensembles.aggregators") == []
    assert loaded_modules(asker, "gateway.annotate") == []
    offenders = {module_name(p): sorted(m for m in imports_of(p) if m.startswith("gateway.asking"))
                 for p in (ROOT / "gateway" / "upstream").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


HARNESS = ROOT / "tests" / "harness"
"""The one test harness (tests/harness/): only it starts the fake upstream and `crowd-gateway serve`."""


def modules_imported(path: Path) -> set[str]:
    """Every module a file imports (any package; lazy imports included), and `module.name` of each `from` import."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def process_starts(path: Path) -> list[str]:
    """Where a file starts the fake upstream (runs or imports tests/harness/fake_upstream.py) or a gateway process (a
    command line, or a call's arguments, holding "serve" and a computed `crowd-gateway` or `gateway.cli`: the
    expected argv of a deploy test is all constants)."""
    found: set[str] = set()
    where = str(path.relative_to(ROOT))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            text = " ".join(ast.unparse(arg) for arg in [*node.args, *(k.value for k in node.keywords)])
            if "fake_upstream" in text:
                found.add(f"{where}:{node.lineno}: fake upstream")
            if re.search(r"""['"]serve['"]""", text) and re.search(r"crowd-gateway|gateway\.cli", text):
                found.add(f"{where}:{node.lineno}: crowd-gateway serve")
        elif isinstance(node, ast.List) and any(isinstance(e, ast.Constant) and e.value == "serve" for e in node.elts):
            if any(not isinstance(e, ast.Constant) and re.search(r"crowd-gateway|gateway\.cli", ast.unparse(e))
                   for e in node.elts):
                found.add(f"{where}:{node.lineno}: crowd-gateway serve")
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                "fake_upstream" in name for name in modules_imported_by(node)):
            found.add(f"{where}:{node.lineno}: fake upstream imported")
    return sorted(found)


def modules_imported_by(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]


def test_bench_imports_no_conftest_or_test_module() -> None:
    """bench/ shares code with the tests through the harness only, never through a conftest or a test module."""
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in modules_imported(p) if any(
        part == "conftest" or part.startswith("test_") for part in m.split("."))) for p in (ROOT / "bench").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_harness_starts_the_fake_upstream_and_gateway_processes() -> None:
    files = [p for d in ("tests", "bench") for p in (ROOT / d).rglob("*.py")
             if HARNESS not in p.parents and p != Path(__file__).resolve()]  # this file names what it looks for
    assert [start for p in files for start in process_starts(p)] == []
    harness = [start for p in HARNESS.rglob("*.py") for start in process_starts(p)]
    assert any("fake upstream" in s for s in harness) and any("serve" in s for s in harness)  # the check sees them
