"""Bad input through the CLI as a user meets it: a clear message naming file, line and field; exit code 2;
nothing published, nothing staged."""
import json

import pytest

from flows.cli import main


def _build(tmp_path, data_root, capsys, lines=None, path=None, extra=()):
    if path is None:
        path = tmp_path / "in.jsonl"
        path.write_text("\n".join(lines) + "\n")
    code = main(["build", "demo", "--set", "tasks.kind=jsonl", "--set", f"tasks.path={path}",
                 "--set", "engines.student.kind=fake", "--runner", "local", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (data_root / "datasets").exists() and not (data_root / "staging").exists()
    return err


GOOD = json.dumps({"question": "What is 1 plus 1?", "answer": "1 + 1 = 2\n#### 2"})


def test_missing_file(tmp_path, data_root, capsys):
    err = _build(tmp_path, data_root, capsys, path=tmp_path / "nope.jsonl")
    assert "nope.jsonl" in err and "not found" in err.lower()


def test_malformed_jsonl_line(tmp_path, data_root, capsys):
    err = _build(tmp_path, data_root, capsys, lines=[GOOD, GOOD, '{"question": "x", "answer": '])
    assert "in.jsonl:3" in err


def test_missing_field(tmp_path, data_root, capsys):
    err = _build(tmp_path, data_root, capsys, lines=[GOOD, json.dumps({"question": "What?"})])
    assert "in.jsonl:2" in err and "'answer'" in err


def test_wrong_type(tmp_path, data_root, capsys):
    err = _build(tmp_path, data_root, capsys, lines=[json.dumps({"question": 12, "answer": "#### 1"})])
    assert "in.jsonl:1" in err and "'question'" in err and "int" in err


def test_unknown_set_key(tmp_path, data_root, capsys):
    code = main(["build", "demo", "--set", "generate.nn=3"])
    assert code == 2 and "unknown key 'generate.nn'" in capsys.readouterr().err


def test_unreachable_ray_cluster_fails_fast(tmp_path, data_root, capsys):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = [GOOD]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = main(["build", "demo", "--no-prefect", "--set", "tasks.kind=jsonl", "--set", f"tasks.path={path}",
                 "--set", "engines.student.kind=fake", "--ray-address", f"127.0.0.1:{port}", "--no-progress"])
    assert code == 2 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (data_root / "datasets").exists()


@pytest.mark.parametrize("what", ["empty_dir", "missing_dir", "file", "uncached_hub_id"])
def test_unusable_engine_model_fails_before_anything_is_written(what, tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"x")
    model = {"empty_dir": str(tmp_path / "empty"), "missing_dir": str(tmp_path / "nope" / "model"),
             "file": str(tmp_path / "weights.bin"), "uncached_hub_id": "errata-tests/no-such-model"}[what]
    err = _build(tmp_path, data_root, capsys, lines=[GOOD],
                 extra=["--set", "engines.student.kind=vllm", "--set", f"engines.student.model={model}"])
    assert "engines.student.model" in err and model in err
    expect = {"empty_dir": "no config.json", "missing_dir": "no such directory", "file": "is a file",
              "uncached_hub_id": "HF_HUB_OFFLINE"}[what]
    assert expect in err


def test_cli_prints_errata_errors_without_prefect_tracebacks(tmp_path):
    """As a user sees it (a fresh process, Prefect's console logging): an errata error inside the flow is one
    line per log record and one `error:` line, not Prefect's tracebacks."""
    import os
    import subprocess
    import sys
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, ERRATA_DATA=str(tmp_path / "data"), PREFECT_HOME=str(tmp_path / "prefect"))
    env.pop("PREFECT_API_URL", None)
    p = subprocess.run([sys.executable, "-m", "flows.cli", "build", "demo", "--runner", "local", "--no-progress",
                        "--set", f"engines.student.model={tmp_path / 'empty'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[0].startswith("building demo") and "full log:" in lines[0], p.stderr
    assert [ln for ln in lines if ln.startswith("error: engines.student.model:")], p.stderr
    log = next(ln.split("full log: ", 1)[1] for ln in lines if ln.startswith("full log: "))
    assert "run the same command again" in p.stderr and len(lines) <= 6, p.stderr   # quiet: errata's lines only
    text = open(log).read()
    assert "has no config.json" in text and "Prefect" in text    # the libraries' records went to the log file
    assert not (tmp_path / "data" / "datasets").exists() and not (tmp_path / "data" / "staging").exists()


def test_console_formatter_keeps_tracebacks_of_other_errors():
    import logging
    import sys
    from flows._env import _ShortErrataErrors
    from schemas.errors import ConfigError
    fmt = _ShortErrataErrors(logging.Formatter("%(message)s"))

    def record(exc):
        try:
            raise RuntimeError("wrapper") from exc
        except RuntimeError:
            return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None,
                                     sys.exc_info())
    assert fmt.format(record(ConfigError("bad key"))) == "failed"  # wraps an errata error: one line
    r = record(ValueError("a bug"))
    out = fmt.format(r)
    assert out.startswith("failed\n") and "Traceback" in out and "ValueError: a bug" in out
    assert r.exc_info is not None  # the record is left as it was for other handlers
