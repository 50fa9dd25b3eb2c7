"""The architecture stays as docs/architecture.md says: every DVC stage depends on exactly the code it runs, the
package has no import cycles, the low modules stay low and the model registry is imported by nobody."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PKG = "topo2vec_lib"


def _module_file(name: str) -> Path | None:
    """The file of module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py), None when it is not ours."""
    if name != PKG and not name.startswith(PKG + "."):
        return None
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _with_parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def direct_imports(path: Path, module: str | None = None) -> set[str]:
    """Package modules a source file imports anywhere (top level, in functions, lazily), resolved to modules."""
    tree = ast.parse(path.read_text(), str(path))
    package = None
    if module is not None:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                assert package is not None, f"relative import in {path}"
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [base] + [f"{base}.{a.name}" for a in node.names]     # `from pkg import submodule`
        else:
            continue
        for name in names:
            if _module_file(name) is not None:
                found.update(n for n in _with_parents(name) if _module_file(n) is not None)
    found.discard(module) if module else None
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): direct_imports(p, module_name(p)) for p in sorted((REPO / PKG).rglob("*.py"))}


def transitive(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def stage_notebooks() -> dict[str, tuple[Path, list[str]]]:
    """DVC stage name -> (its notebook source, its deps), for every stage that runs notebooks/run.sh."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    out = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        words = body["cmd"].split()
        if "notebooks/run.sh" in words:
            src = words[words.index("notebooks/run.sh") + 1]
            out[name] = (REPO / "notebooks" / f"{src}.py", [str(d) for d in body.get("deps", [])])
    return out


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_notebooks()))
def test_stage_depends_on_all_the_code_it_runs(stage):
    notebook, deps = stage_notebooks()[stage]
    graph = import_graph()
    modules = transitive(direct_imports(notebook), graph)
    files = sorted({_module_file(m) for m in modules} - {None})        # type: ignore[arg-type]
    assert files, f"{stage}: {notebook.name} imports nothing of {PKG}?"
    missing = [f.relative_to(REPO).as_posix() for f in files if not _covered(f, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} runs {notebook.name}, which imports {missing}; add them to its deps"
    assert _covered(notebook, deps), f"stage {stage!r} must depend on its notebook {notebook.name}"
    assert "notebooks/run.sh" in deps, f"stage {stage!r} must depend on notebooks/run.sh"


def test_deps_check_catches_a_missing_module():
    """The check above is not vacuous: a stage that lists only its notebook misses modules."""
    notebook, _ = stage_notebooks()["probe"]
    files = {_module_file(m) for m in transitive(direct_imports(notebook), import_graph())} - {None}
    assert len(files) > 5 and not all(_covered(f, [notebook.relative_to(REPO).as_posix()]) for f in files)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if m.startswith(n + "."):
                continue            # a module's own parent package runs first anyway: not a design cycle
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("low", ["grid", "storage", "params", "paper", "checks"])
def test_low_modules_import_nothing_else_of_the_package(low):
    imports = direct_imports(REPO / PKG / f"{low}.py", f"{PKG}.{low}") - {PKG}
    assert not imports, f"{low}.py must stay at the bottom of the package; it imports {sorted(imports)}"


def test_the_model_registry_is_imported_by_nobody_but_the_models_package():
    """Like TorchGeo's models/api.py: the registry imports every method; no module imports it back, and no
    method takes names from the package's re-exports (``from topo2vec_lib.models import load_embedder``)."""
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if f"{PKG}.models.registry" in deps)
    assert users == [f"{PKG}.models"], users
    for path in sorted((REPO / PKG).rglob("*.py")):
        if module_name(path) in (f"{PKG}.models", f"{PKG}.models.registry"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == f"{PKG}.models":
                reexported = [a.name for a in node.names if _module_file(f"{PKG}.models.{a.name}") is None]
                assert not reexported, f"{module_name(path)} imports {reexported} from the registry's re-exports"


def test_params_check_runs_first_and_guards_every_stage():
    """DVC deletes a stage's outputs before it runs the stage: every stage must depend on the params_check stage's
    output, which tracks the whole params.yaml, so a bad value fails before any output is removed."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    check = dvc["stages"]["params_check"]
    assert check["params"] == [{"params.yaml": None}], "params_check must track every value of params.yaml"
    assert any(isinstance(o, dict) and "reports/params_check.json" in o for o in check["outs"])
    for name, stage in dvc["stages"].items():
        if name != "params_check":
            assert "reports/params_check.json" in stage.get("do", stage)["deps"], f"stage {name!r} must depend on it"
