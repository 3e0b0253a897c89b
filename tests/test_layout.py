"""The package's layout stays one-way: folders in layers that import only downwards, no import
cycle between modules, every function short enough to hold in one's head and every module well
under T5X's largest (issues 10, 23 and 36)."""

import ast
import subprocess
import tomllib
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


# The layers, bottom up; a folder imports only folders of a lower layer (and its own modules).
LAYERS = {
    "base": 0,
    "network": 1,
    "data": 1,
    "prompt": 2,
    "configure": 2,
    "model": 3,
    "transfer": 4,
    "trainer": 5,
    "stages": 6,
    "spot": 7,
    "study": 7,
    "cli": 8,
    "t5x": 8,
}
ENTRY_POINTS = {"__init__.py", "__main__.py"}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[-1] in LAYERS else "."


def upward_arrows(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """Every import of a folder from its own layer or above ("a -> b"); the package root's
    entry points may import anything."""
    arrows = []
    for name, targets in sorted(graph.items()):
        here = _folder(name)
        for target in sorted(targets):
            there = _folder(target)
            if here != "." and there != here and (there == "." or layers[there] >= layers[here]):
                arrows.append(f"{name} -> {target}")
    return arrows


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    assert {_folder(m) for m in graph} == {".", *LAYERS}, "a folder LAYERS does not place"
    assert upward_arrows(graph, LAYERS) == []


def test_the_layer_check_finds_an_upward_arrow():
    graph = {
        "prompt_transfer.base.paths": {"prompt_transfer.network.t5"},
        "prompt_transfer.data.vocab": {"prompt_transfer.network.t5", "prompt_transfer.base.x"},
        "prompt_transfer.cli.jobs": {"prompt_transfer.trainer.train", "prompt_transfer.cli.x"},
        "prompt_transfer.__main__": {"prompt_transfer.cli"},
    }
    assert upward_arrows(graph, LAYERS) == [
        "prompt_transfer.base.paths -> prompt_transfer.network.t5",  # up
        "prompt_transfer.data.vocab -> prompt_transfer.network.t5",  # sideways
    ]


def test_only_the_entry_points_sit_at_the_root():
    assert {p.name for p in PACKAGE.glob("*.py")} == ENTRY_POINTS


# What the repository holds at its top: the design's folders, the CI script and the tools' files.
TOP_LEVEL = {
    *("prompt_transfer", "gin", "tasks", "tests", "launch", "benchmarks", "docs", ".ci"),
    *("pyproject.toml", "README.md", "Makefile", ".gitignore"),
}


def test_the_repository_holds_only_the_designed_top_level():
    """A test's output committed by mistake shows up here (a library written under a folder
    named `'` once reached a commit)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files"], cwd=PACKAGE.parent, capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert {f.split("/")[0] for f in listed if f} <= TOP_LEVEL


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_every_folder_says_what_it_may_import(folder):
    """Each folder's docstring ends with the rule this file checks: "May import: base, network."
    (the folders below it), "nothing of the package", or "every folder but X" (the top)."""
    doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
    said = doc.rsplit("May import: ", 1)[-1].strip().rstrip(".")
    below = [f for f in LAYERS if LAYERS[f] < LAYERS[folder]]
    if LAYERS[folder] == max(LAYERS.values()):
        peers = [f for f in LAYERS if LAYERS[f] == LAYERS[folder] and f != folder]
        assert said == f"every folder but {', '.join(peers)}"
    elif not below:
        assert said == "nothing of the package"
    else:
        assert said == ", ".join(below), f"{folder}/__init__.py says {said!r}"


def _folders() -> list[str]:
    """The package's own folder (its root modules) and every subpackage."""
    return sorted(
        str(p.relative_to(PACKAGE))
        for p in [PACKAGE, *PACKAGE.rglob("*")]
        if p.is_dir() and (p / "__init__.py").exists()
    )


def test_every_folder_is_held_to_the_rules():
    assert set(_folders()) == {".", *LAYERS}


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


def test_every_folder_is_installed():
    """A wheel holds the packages pyproject.toml lists, not what the folder holds: an unlisted
    folder works in the editable install and is missing from a real one (t5x/ was, once)."""
    listed = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"prompt_transfer" + ("" if f == "." else f".{f}") for f in _folders()}
    assert folders <= set(listed["packages"]), sorted(folders - set(listed["packages"]))
