"""The registry and the method packages: no import cycle anywhere, a registry that imports nothing of the
machinery, machinery that imports no method package, `errata show --id` finding a row of every table of every
built-in method, and a third party's method by module path and by entry point."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, REPO
from tests.unit.test_same_rows import RECIPES, build_rows

PACKAGES = ("schemas", "stages", "pipelines", "flows")


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `path` imports anywhere in it (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            if n in modules:
                found.add(n)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_anywhere():
    found = cycles(import_graph())
    assert not found, f"import cycles (counting imports inside functions): {found}"


def test_the_registry_imports_nothing_of_the_machinery():
    graph = import_graph()
    bad = {m for m in graph["schemas.registry"] if not m.startswith("schemas.")}
    assert not bad, f"schemas/registry.py imports {sorted(bad)}"
    schemas_out = {m: {i for i in deps if not i.startswith("schemas")} for m, deps in graph.items()
                   if m.startswith("schemas")}
    assert not any(schemas_out.values()), f"schemas/ imports the machinery: {schemas_out}"


def test_the_machinery_imports_no_method_package():
    """Only the method packages import each other; the machinery finds methods through the registry."""
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.startswith("pipelines.methods."))
           for m, deps in graph.items() if not m.startswith("pipelines.methods")}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"machinery modules import method packages: {bad}"


# --- every table of every built-in method is found by `errata show --id` ---------------------------------------
@pytest.fixture(scope="module")
def built_versions(tmp_path_factory):
    import tests.unit.test_same_rows as same
    same._register_agent_scripts()
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("ERRATA_MODELS", str(MODELS_DIR))
    mp.delenv("ERRATA_DATA", raising=False)
    try:
        return str(root), {recipe: build_rows(recipe, str(root)) for recipe in RECIPES}
    finally:
        mp.undo()


def test_show_id_finds_a_row_of_every_table_of_every_builtin_method(built_versions, capsys):
    from flows.cli import main
    from schemas.registry import methods
    root, built = built_versions
    shown = set()
    for recipe, tables in built.items():
        for table, got in tables.items():
            if not got["ids"]:
                continue
            for row_id in (got["ids"][0], got["ids"][-1]):
                assert main(["--data", root, "show", recipe, "--id", row_id]) == 0, (recipe, table, row_id)
                out = capsys.readouterr().out
                assert out.startswith(f"# {recipe}@1 ") and row_id in out, out[:300]
            shown.add(table)
    method_tables = set()
    for m in methods().values():
        if m.home is not None and m.home.parent == REPO / "pipelines" / "methods":
            for s in m.stages:
                method_tables |= set(s.stage.writes)
    assert method_tables - {"errors"} <= shown, f"tables no build showed: {sorted(method_tables - shown)}"


def test_show_id_of_an_error_row(fake_recipe, data_root, tmp_path, capsys):
    from flows.cli import main
    from pipelines.build import build
    from pipelines.catalog import Catalog
    tasks = tmp_path / "fails.jsonl"
    tasks.write_text('{"question": "What is 1 plus 1? [gold=2] [fail=prompt_too_long]", "answer": "#### 2"}\n'
                     '{"question": "What is 2 plus 2? [gold=4]", "answer": "#### 4"}\n')
    cfg = fake_recipe(tasks={"kind": "jsonl", "path": str(tasks)})
    m = build(cfg, progress=False).manifest
    errors = Catalog(str(data_root)).read_table(m, "errors").to_pylist()
    assert errors and errors[0]["reason"] == "prompt_too_long"
    assert main(["show", "fake", "--id", errors[0]["error_id"]]) == 0
    assert "prompt_too_long" in capsys.readouterr().out


# --- a third party's method ----------------------------------------------------------------------------------------
@pytest.fixture
def registry_restored():
    import schemas.registry as registry
    registry.load_methods()
    saved = dict(registry._METHODS)
    yield
    registry._METHODS.clear()
    registry._METHODS.update(saved)


def test_a_method_named_by_module_path_builds_and_its_table_is_shown(data_root, tmp_path, capsys, registry_restored):
    from flows.cli import main
    recipe = tmp_path / "echo.yaml"
    recipe.write_text('dataset: echo\nmethod: "tests.third_party_method:METHOD"\n'
                      "tasks: {kind: builtin, count: 3, seed: 0}\n"
                      "engines: {student: {kind: fake, fake_script: mixed}}\n"
                      "generate: {n: 2, max_tokens: 32}\nexecution: {runner: local}\n")
    assert main(["build", str(recipe), "--no-prefect", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["show", "echo@1"]) == 0
    manifest = capsys.readouterr().out
    assert '"echoes"' in manifest and '"method": "tests.third_party_method:METHOD"' in manifest
    from pipelines.catalog import Catalog
    cat = Catalog(str(data_root))
    echoes = cat.read_table(cat.resolve("echo@1"), "echoes").to_pylist()
    assert len(echoes) == 6 and all(e["words"] > 0 for e in echoes)
    assert main(["show", "echo", "--id", echoes[0]["echo_id"]]) == 0
    assert echoes[0]["attempt_id"] in capsys.readouterr().out


def test_a_bad_method_reference_is_a_clear_error(registry_restored):
    from schemas.errors import ConfigError
    from schemas.registry import get_method
    with pytest.raises(ConfigError, match="'tests.third_party_method:NOPE': cannot load it"):
        get_method("tests.third_party_method:NOPE")
    with pytest.raises(ConfigError, match="is a type, not a Method"):
        get_method("tests.third_party_method:EchoStage")


def test_a_method_from_an_entry_point_brings_its_recipe(tmp_path, monkeypatch):
    """A package that declares `[project.entry-points."errata.methods"] echo_ep = "...:ENTRY_POINT_METHOD"` is
    found without editing errata; its recipe comes from the method's own recipes/ folder."""
    import schemas.registry as registry
    from pipelines.config import load_recipe, recipe_names
    dist = tmp_path / "echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[errata.methods]\necho_ep = tests.third_party_method:ENTRY_POINT_METHOD\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = dict(registry._METHODS)
    monkeypatch.setattr(registry, "_LOADED", False)
    try:
        assert "echo_ep" in registry.methods()
        assert "echo" in recipe_names()
        cfg = load_recipe("echo")
        assert cfg.method == "echo_ep" and cfg.echo is not None
    finally:
        registry._METHODS.clear()
        registry._METHODS.update(saved)
