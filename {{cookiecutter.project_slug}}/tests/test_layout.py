"""The package's layout is its architecture: imports run one way, and no file is too long to read.

The import graph is read from the source (every `import`, also those inside functions), so
a lazy import that closes a circle is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "{{ cookiecutter.package_name }}"
MAX_LINES = 600

# What each part of the package may import (besides itself). A part is a subpackage or a
# top-level module. Read from the bottom up: config and atomic use nothing of ours; tracking
# is used by everyone and uses neither the model, the data nor the recipe; cli is on top.
MAY_IMPORT = {
    "atomic": set(),
    "config": set(),
    "tracking": {"atomic", "config"},
    "model": {"config"},
    "data": {"atomic", "config", "model"},  # model: the tokenizer
    # model: the shape facts (FLOPs, attention, loss); export: vLLM's adapter rules, for plan's warning
    "compute": {"atomic", "config", "model", "tracking", "export"},
    "train": {"atomic", "config", "model", "data", "compute", "tracking", "export"},  # export: vLLM's rules, warned at the start
    "evaluate": {"atomic", "config", "model", "data", "tracking"},
    "report": {"config", "tracking", "evaluate", "compute"},
    "export": {"atomic", "config", "model", "data", "evaluate", "tracking"},  # evaluate: the held-out loss and prompts
    "chat": {"config", "model", "data"},
    "tiny": {"atomic", "data"},
    "bench": {"config", "model", "data", "train"},
    "cli": {"atomic", "config", "tracking", "model", "data", "compute", "train", "evaluate", "report", "export", "tiny",
            "bench", "chat"},
    "__main__": {"cli"},
    "__init__": set(),
}
# The top level holds the CLI, the config, the atomic-write helper and a few single-purpose modules.
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "config", "atomic", "report", "tiny", "bench", "chat"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's own modules that `name` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    if name == "__init__":
        here = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[: len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            target = ".".join(base)
            for alias in node.names:  # `from . import data` imports the module data
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in MODULES else target)
    found.discard("")
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def part(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_the_imports_it_should():
    # Guards the reader above: if it lost relative imports, the checks below would pass vacuously.
    assert {"config", "train", "compute.sweep"} <= GRAPH["cli"]  # `from .compute import sweep` names the subpackage
    assert {"model.loading", "model.fit", "data", "train.optim"} <= GRAPH["train.session"]
    assert "model.loading" in GRAPH["data.prepare"]  # an import inside a function counts too


def test_no_module_imports_in_a_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module, [])):
            start = cycle.index(cycle[-1])
            pytest.fail("import cycle: " + " -> ".join(cycle[start:]))


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_one_way(module):
    allowed = MAY_IMPORT[part(module)] | {part(module)}
    wrong = sorted(target for target in GRAPH[module] if part(target) not in allowed)
    assert not wrong, f"{module} imports {wrong}; {part(module)} may import only {sorted(allowed - {part(module)})}"


def test_the_allowed_imports_themselves_run_one_way():
    # MAY_IMPORT must stay a layering: no part may reach itself through others.
    def reaches(start: str, goal: str, seen=frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in MAY_IMPORT[start])

    assert not [p for p in MAY_IMPORT if reaches(p, p)]


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_no_source_file_is_longer_than_600_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE_DIR)} has {lines} lines; split it by job into a small package"


def test_the_top_level_holds_only_the_cli_config_and_single_purpose_modules():
    top = {p.stem for p in PACKAGE_DIR.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"new top-level modules {sorted(top - TOP_LEVEL_MODULES)}: put them in a package"
    packages = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    assert packages == {"data", "model", "train", "evaluate", "compute", "tracking"} | (packages & {"export"})


@pytest.mark.parametrize("package", sorted(p.parent.name for p in PACKAGE_DIR.glob("*/__init__.py")))
def test_every_package_says_what_it_holds_and_may_import(package):
    doc = ast.get_docstring(ast.parse((PACKAGE_DIR / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    modules = {p.stem for p in (PACKAGE_DIR / package).glob("*.py") if p.stem != "__init__"}
    modules |= {p.parent.name for p in (PACKAGE_DIR / package).glob("*/__init__.py")}
    missing = sorted(m for m in modules if m not in doc.split())
    assert not missing, f"{package}/__init__.py's docstring does not mention {missing}"
    assert "Imports:" in doc, f"{package}/__init__.py's docstring does not say what the package may import"
