"""The library's imports point one way (DESIGN.md §3): schemas ← core ← stores ← trainer,
producers ← consumers ← api. ``api`` imports no ``consumers`` module; ``trainer`` imports no
``consumers``, ``producers`` or ``api``; siblings (trainer, producers) do not import each other.

Every import counts, at module level or inside a function. The edges that break the rule today
are listed in ``KNOWN``: programs that combine roles and must move out of the library into
``apps/`` (issue 12), which may import everything and which nothing imports. A new wrong edge
fails this test, and so does a listed edge that is gone, so the list only ever shrinks.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The layers, by folder: each is installed as ``streamrec.<folder>`` (streamrec/<folder> links to
# the top-level folder), so a module's layer is the name after ``streamrec.``.
RANK = {
    "schemas": 0,
    "core": 1,
    "stores": 2,
    "trainer": 3,
    "producers": 3,
    "consumers": 4,
    "api": 5,
    "apps": 6,  # programs: import anything, imported by nothing
    "sdk": 6,  # streamrec's own modules (the SDK apps import): import only SDK_IMPORTS
}
FORBIDDEN = {("api", "consumers")}  # allowed by rank, excluded by design
# What ``import streamrec`` may load: the contracts, the publishers and the error tree (a leaf
# module), never the server's heavy parts (torch, FastAPI, stores).
SDK_IMPORTS = ("streamrec.schemas", "streamrec.producers", "streamrec.core.errors")

# Empty since the embedded all-in-one (apps/up.py) and the simulator (apps/simulate.py) left
# the library; a wrong edge to come must be fixed, or listed here with the reason and its move.
KNOWN: set[tuple[str, str]] = set()


def _layer(module: str) -> str | None:
    """``streamrec.stores.features`` → ``stores``; ``streamrec.client`` → ``sdk``; else None."""
    parts = module.split(".")
    if parts[0] != "streamrec":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "sdk"


def _sources(layer: str) -> list[Path]:
    if layer == "sdk":  # the files of streamrec/ itself, not the folders linked into it
        return sorted((ROOT / "streamrec").glob("*.py"))
    return sorted((ROOT / layer).rglob("*.py"))


def _module(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(relative if relative[0] == "streamrec" else ("streamrec", *relative))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _edges() -> set[tuple[str, str]]:
    """(module, imported module) for every import of another streamrec layer."""
    found: set[tuple[str, str]] = set()
    for layer in RANK:
        for path in _sources(layer):
            for name in _imports(path):
                if _layer(name) not in (None, layer):
                    found.add((_module(path), name))
    return found


def _wrong(source: str, target: str) -> bool:
    a, b = _layer(source), _layer(target)
    assert a is not None and b is not None
    if a == "sdk":
        return not any(target == name or target.startswith(f"{name}.") for name in SDK_IMPORTS)
    return RANK[b] >= RANK[a] or (a, b) in FORBIDDEN


def test_no_generic_top_level_module_is_imported() -> None:
    """Everything is imported under ``streamrec.``: ``import core`` names no module of ours."""
    bare = {
        (_module(path), name)
        for layer in RANK
        for path in _sources(layer)
        for name in _imports(path)
        if name.split(".")[0] in RANK
    }
    assert bare == set(), f"imports without the streamrec prefix: {sorted(bare)}"


def test_imports_point_one_way() -> None:
    wrong = {edge for edge in _edges() if _wrong(*edge)}
    assert wrong - KNOWN == set(), f"imports against the direction: {sorted(wrong - KNOWN)}"
    assert KNOWN - wrong == set(), f"gone: remove from KNOWN: {sorted(KNOWN - wrong)}"


def test_packages_form_no_cycle() -> None:
    """Beyond the known edges, the package graph is acyclic (a depth-first search)."""
    graph: dict[str, set[str]] = {package: set() for package in RANK}
    for source, target in _edges() - KNOWN:
        source_layer, target_layer = _layer(source), _layer(target)
        assert source_layer is not None and target_layer is not None
        graph[source_layer].add(target_layer)
    state: dict[str, str] = {}

    def visit(package: str, path: list[str]) -> None:
        state[package] = "open"
        for target in graph[package]:
            assert state.get(target) != "open", f"cycle: {' -> '.join([*path, target])}"
            if target not in state:
                visit(target, [*path, target])
        state[package] = "done"

    for package in graph:
        if package not in state:
            visit(package, [package])


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from streamrec.consumers.app import x\n    import streamrec.api.app\n"
    )
    assert _imports(source) == {"streamrec.consumers.app", "streamrec.api.app"}
    assert _wrong("streamrec.trainer.x", "streamrec.consumers.app") and _wrong(
        "streamrec.api.x", "streamrec.consumers.dlq"
    )
    assert not _wrong("streamrec.consumers.x", "streamrec.trainer.models") and not _wrong(
        "streamrec.api.x", "streamrec.trainer.rl"
    )
    assert not _wrong("streamrec.apps.simulate", "streamrec.consumers.app") and _wrong(
        "streamrec.api.app", "streamrec.apps.simulate"
    )
    assert not _wrong("streamrec.client", "streamrec.core.errors") and _wrong(
        "streamrec.x", "streamrec.core.settings"
    )
    assert _wrong("streamrec.client", "streamrec.stores.features") and _wrong(
        "streamrec.apps.up", "streamrec.client"
    )


def _command_modules() -> set[str]:
    """The CLI layer: ``core.cli`` and the modules the ``streamrec.commands`` entry points name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries = project["project"]["entry-points"]["streamrec.commands"].values()
    return {"streamrec.core.cli", *(entry.split(":")[0] for entry in entries)}


def test_typer_only_in_the_cli_layer() -> None:
    """No typer below the CLI: library code raises domain errors and returns values; only the
    modules that register commands turn them into messages and exit codes."""
    using = {
        _module(path)
        for layer in RANK
        for path in _sources(layer)
        if any(name.split(".")[0] == "typer" for name in _imports(path))
    }
    assert "streamrec.trainer.cli" in using  # the check sees them
    assert using - _command_modules() == set(), "typer below the CLI layer"
