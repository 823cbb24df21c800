"""The shape of the code, read from its import statements (ast, nothing imported):
no import cycles, and the core (the folder vidstyle/) never imports the trainer or
the fleet (trainer/ and workers/, installed as vidstyle.trainer and vidstyle.workers),
which build on it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each folder and the import name it is installed under (pyproject.toml's package-dir).
PACKAGES = {"vidstyle": "vidstyle", "workers": "vidstyle.workers", "trainer": "vidstyle.trainer"}


def module_name(path: Path) -> str:
    folder, *parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([PACKAGES[folder], *(parts[:-1] if parts[-1] == "__init__" else parts)])


def folder_of(module: str) -> str:
    """vidstyle.workers.tasks -> workers, vidstyle.pipeline -> vidstyle."""
    return next(folder for folder, name in sorted(PACKAGES.items(), key=lambda item: -len(item[1]))
                if module == name or module.startswith(name + "."))


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project's modules a file imports, anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from vidstyle import formats` imports vidstyle.formats; `from vidstyle.x import f`, vidstyle.x.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_vidstyle_never_imports_the_trainer_or_the_fleet():
    graph = import_graph()
    assert graph["vidstyle.pipeline"] and graph["vidstyle.workers.tasks"]  # the graph is read at all
    upward = {(module, target) for module, targets in graph.items() if folder_of(module) == "vidstyle"
              for target in targets if folder_of(target) in ("trainer", "workers")}
    assert not upward, f"vidstyle/ imports {sorted(upward)}"
