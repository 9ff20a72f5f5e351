"""The structure a newcomer meets: the import graph of ``portal``, ``vms`` and ``images`` has no circle.

Built from the source (every import, function-level ones included), without importing anything:

* no cycle, except through a Celery tasks module: services queue tasks (``vms.tasks``), and a task
  imports the service it runs only when it runs (task ↔ service);
* function-level imports only in ``tasks.py``, ``signals.py`` and ``apps.py`` (Django and Celery load
  those by name; everything else imports at the top, so its dependencies are visible);
* no private name (``_something``) imported from another module of the project.

Tests, migrations and the test-support modules are left out (they sit above everything).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("portal", "vms", "images")
LAZY_ALLOWED = {"tasks.py", "signals.py", "apps.py"}


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)
    lazy: list[str] = field(default_factory=list)  # "line: module" of function-level imports
    private: list[str] = field(default_factory=list)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _skipped(path: Path) -> bool:
    parts = path.relative_to(ROOT).parts
    return "tests" in parts or "migrations" in parts or path.name.endswith("testing.py") or "_testing" in path.name


def _project(name: str) -> bool:
    return name.split(".")[0] in APPS


def collect() -> dict[str, Module]:
    modules = {}
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if not _skipped(path):
                modules[_module_name(path)] = Module(_module_name(path), path)
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        lazy_nodes = {id(sub) for fn in functions for sub in ast.walk(fn)}
        package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
                if _project(base):
                    module.private += [
                        f"{node.lineno}: {base}.{alias.name}"
                        for alias in node.names
                        if alias.name.startswith("_") and f"{base}.{alias.name}" not in modules
                    ]
            else:
                continue
            targets = [t for t in targets if _project(t) and t != module.name]
            if not targets:
                continue
            if id(node) in lazy_nodes:
                module.lazy += [f"{node.lineno}: {t}" for t in targets]
            for target in targets:
                # importing a.b.c runs the packages a.b and a first: they are dependencies too
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    name = ".".join(parts[:depth])
                    if name in modules and name != module.name and not module.name.startswith(name + "."):
                        module.imports.add(name)
    return modules


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), edges out of tasks modules left out."""
    graph = {
        name: sorted(m.imports) if not name.endswith(".tasks") else []  # a task runs its service lazily
        for name, m in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, []):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_covers_the_apps():
    modules = collect()
    assert {"vms.lifecycle", "vms.compute.base", "images.services", "portal.access"} <= set(modules)
    assert "vms.compute.base" in modules["vms.lifecycle"].imports or "vms.compute" in modules["vms.lifecycle"].imports


def test_no_import_cycle_but_task_and_service():
    found = cycles(collect())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle_and_lets_tasks_close_one():
    modules = {name: Module(name, Path(name)) for name in ("a.x", "a.y", "a.tasks", "a.z")}
    modules["a.x"].imports = {"a.y"}
    modules["a.y"].imports = {"a.x"}
    modules["a.z"].imports = {"a.tasks"}
    modules["a.tasks"].imports = {"a.z"}
    assert cycles(modules) == [["a.x", "a.y"]]


def test_function_level_imports_only_where_loaded_by_name():
    lazy = [
        f"{m.path.relative_to(ROOT)}:{line}"
        for m in collect().values()
        if m.path.name not in LAZY_ALLOWED
        for line in m.lazy
    ]
    assert not lazy, "function-level imports of the project:\n" + "\n".join(lazy)


def test_no_private_name_is_imported_from_another_module():
    private = [f"{m.path.relative_to(ROOT)}:{line}" for m in collect().values() for line in m.private]
    assert not private, "private names imported:\n" + "\n".join(private)
