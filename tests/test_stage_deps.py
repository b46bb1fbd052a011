"""Each dvc.yaml stage's code deps are exactly the amo modules its stage module imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """The source file of amo module `name`, or None when it is not one of amo's."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` except those under `if TYPE_CHECKING:` (never imported at run time)."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        nodes.append(node)
        todo += ast.iter_child_nodes(node)
    return nodes


def imported_modules(path: Path) -> set[str]:
    """amo modules named by any import in `path`, at the top or inside a function (amo imports
    lazily, so a stage's closure includes both)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "amo"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "amo":
            for alias in node.names:  # `from amo import data` names the module amo.data
                child = f"{node.module}.{alias.name}"
                found.add(child if module_file(child) else node.module)
    return found


def closure(module: str) -> set[Path]:
    """Files of `module` and of every amo module it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += imported_modules(path)
    return seen


def stage_code_deps() -> dict[str, tuple[set[str], set[str]]]:
    """For every stage: (source files its deps list, source files its module imports)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    result = {}
    for name, stage in spec["stages"].items():
        body = stage.get("do", stage)
        command = body["cmd"].split()
        assert command[0] == "amo", f"stage {name}: cmd must run the amo CLI, got {body['cmd']!r}"
        module = "amo.stages." + command[1].replace("-", "_")
        listed = {d for d in body["deps"] if d.startswith("src/")}
        imported = {str(p.relative_to(ROOT)) for p in closure(module)}
        result[name] = (listed, imported)
    return result


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_stage_deps_match_the_code_it_runs(stage: str) -> None:
    """A stage's deps name every amo module its code imports, and nothing else."""
    listed, imported = stage_code_deps()[stage]
    assert not imported - listed, f"dvc.yaml stage {stage}: deps miss {sorted(imported - listed)}"
    assert not listed - imported, f"dvc.yaml stage {stage}: deps list unused {sorted(listed - imported)}"


def test_closure_follows_lazy_and_package_imports() -> None:
    """The closure sees imports inside functions and `from amo import x` as module x, and skips
    imports made only for type checking."""
    imported = {str(p.relative_to(ROOT)) for p in closure("amo.stages.evaluate")}
    assert {"src/amo/stages/routed.py", "src/amo/data.py", "src/amo/planner/__init__.py",
            "src/amo/planner/estimator.py"} <= imported
    assert "src/amo/cli.py" not in imported
    assert "src/amo/routing.py" not in {str(p.relative_to(ROOT)) for p in closure("amo.metrics")}
