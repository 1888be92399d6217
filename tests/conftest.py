import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MODELS_DIR = REPO / "data" / "models"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def write_gsm8k_style(path: Path, n: int = 6, bad: dict | None = None) -> Path:
    """GSM8K-style JSONL whose questions carry the fake engine's gold marker."""
    lines = []
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        lines.append(json.dumps({"question": f"What is {a} plus {b}? [gold={a + b}]",
                                 "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_slow_fake_recipe(folder: Path, delay_s: float) -> Path:
    """Recipe `slow`: 8 GSM8K-style tasks, one per shard, on the scripted fake engine whose calls take `delay_s`
    seconds, in process: a build that is still running when a test stops it."""
    tasks = write_gsm8k_style(folder / "tasks.jsonl", 8)
    recipe = folder / "slow.yaml"
    recipe.write_text(f"dataset: slow\ntasks: {{kind: jsonl, path: {tasks}}}\n"
                      f"engines: {{student: {{kind: fake, fake_script: mixed, fake_delay_s: {delay_s}}}}}\n"
                      "generate: {n: 2, max_tokens: 64}\nexecution: {runner: local, shard_size: 1}\n")
    return recipe


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("ERRATA_DATA", str(root))
    return root


@pytest.fixture
def fake_recipe(tmp_path, data_root):
    """A recipe on the scripted fake engine over a small GSM8K-style file; runs in process unless told."""
    from pipelines.config import validate_recipe

    def make(n: int = 6, runner: str = "local", script: str = "mixed", **over):
        f = write_gsm8k_style(tmp_path / "tasks.jsonl", n)
        d = {"dataset": over.pop("dataset", "fake"), "method": over.pop("method", "sample_verify"),
             "tasks": {"kind": "jsonl", "path": str(f)},
             "engines": {"student": {"kind": "fake", "fake_script": script}},
             "generate": {"n": over.pop("n_samples", 2), "max_tokens": 64},
             "execution": {"runner": runner, "shard_size": over.pop("shard_size", 2),
                           "shards_in_flight": over.pop("shards_in_flight", 1)},
             "storage": {"root": str(data_root)}}
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                d[k] = {**d[k], **v}
            else:
                d[k] = v
        return validate_recipe(d)
    return make


def errata(*args, env=None, check=True, timeout=900, **kw):
    """Run the installed `errata` CLI as a user would."""
    exe = Path(sys.executable).parent / "errata"
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"errata {' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def pytest_sessionfinish(session, exitstatus):
    """Prefect logs "Stopping temporary server" from an atexit hook, after pytest has closed its capture streams
    (a logging traceback at exit). Nothing of value is logged after the session: silence INFO from here on."""
    import logging
    logging.disable(logging.INFO)


# --- helpers of the build tests (tests/unit/test_build_local.py, test_recipe_contract.py) ---------------------
def catalog(data_root):
    from pipelines.catalog import Catalog
    return Catalog(str(data_root))


def with_extra_stage(name: str, stage: type, after: str | None = None):
    """Register a test method: sample_verify with `stage` inserted after the stage named `after` (or at the end)."""
    from schemas.registry import Method, StageSpec, get_method, register_method
    base = get_method("sample_verify")
    stages = list(base.stages)
    at = len(stages) if after is None else [s.name for s in stages].index(after) + 1
    stages.insert(at, StageSpec(name, stage))
    return register_method(Method(f"sv_{name}", "test", tuple(stages), exports=base.exports))


@pytest.fixture
def methods_restored():
    """Test methods registered inside a test are unregistered after it."""
    from schemas.registry import _METHODS, methods
    methods()       # the built-in methods load once per process: load them before saving, or the restore drops them
    saved = dict(_METHODS)
    yield
    _METHODS.clear()
    _METHODS.update(saved)


# --- helpers of the CLI integration tests (a real `errata build` in a subprocess, then its published files) ----
def cli_env(root) -> dict:
    """The environment of an `errata` subprocess writing under `root`, with this checkout importable."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, ERRATA_DATA=str(root), ERRATA_MODELS=str(MODELS_DIR), PYTHONPATH=path)


def version_tables(root, dataset: str):
    """The latest version of `dataset` under `root`: its manifest and every table's rows."""
    from pipelines.catalog import Catalog
    cat = Catalog(str(root))
    m = cat.resolve(dataset)
    return m, {t: cat.read_table(m, t).to_pylist() for t in m.tables}


def published_manifest(root, dataset: str, version: int = 1) -> dict:
    return json.loads((root / "datasets" / dataset / f"v{version:04d}" / "manifest.json").read_text())


def published_rows(root, table: str, dataset: str, version: int = 1) -> list[dict]:
    import pyarrow.parquet as pq
    files = sorted((root / "datasets" / dataset / f"v{version:04d}" / table).glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]
