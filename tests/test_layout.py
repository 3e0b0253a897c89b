"""The package's layout stays one-way: no import cycle between modules, every function short
enough to hold in one's head and every module well under T5X's largest (issues 10 and 23)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prompt_transfer"
LONGEST = 80  # lines per function, in every module of the package
LARGEST = 500  # lines per module


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """{module: the package modules it imports}, function-level imports included (an import
    deferred into a function still ties the two modules together)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                    ).strip(".")
                targets |= {f"{base}.{alias.name}" for alias in node.names} | {base}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state = {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*trail[trail.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert "prompt_transfer.trainer.train" in graph  # the graph sees the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_library_layers_import_nothing_above_them():
    """Data flows one way: the trainer never imports the CLI or the SPoT flow, transfer never
    imports the trainer, and nothing but the CLI (and `python -m prompt_transfer`) imports the
    CLI."""
    graph = import_graph()
    for name, targets in graph.items():
        if not name.startswith(("prompt_transfer.cli", "prompt_transfer.__main__")):
            assert not any(t.startswith("prompt_transfer.cli") for t in targets), name
        if name.startswith(("prompt_transfer.trainer", "prompt_transfer.transfer")):
            assert not any(t.startswith("prompt_transfer.spot") for t in targets), name
        if name.startswith("prompt_transfer.transfer"):
            assert not any(t.startswith("prompt_transfer.trainer") for t in targets), name


def _folders() -> list[str]:
    """The package's own folder (its root modules) and every subpackage."""
    return sorted(
        str(p.relative_to(PACKAGE))
        for p in [PACKAGE, *PACKAGE.rglob("*")]
        if p.is_dir() and (p / "__init__.py").exists()
    )


def test_every_folder_is_held_to_the_rules():
    assert {".", "cli", "spot", "trainer", "transfer"} <= set(_folders())


@pytest.mark.parametrize("folder", _folders())
def test_functions_stay_short(folder):
    long = []
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, f"functions over {LONGEST} lines: {', '.join(long)}"


def test_modules_stay_small():
    large = [
        f"{path.relative_to(PACKAGE)} ({lines} lines)"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > LARGEST
    ]
    assert not large, f"modules over {LARGEST} lines: {', '.join(large)}"
