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
                 "--set", "engine.kind=fake", "--runner", "local", "--no-progress", *extra])
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
    code = main(["build", "demo", "--set", "sampling.nn=3"])
    assert code == 2 and "unknown key 'sampling.nn'" in capsys.readouterr().err


def test_unreachable_ray_cluster_fails_fast(tmp_path, data_root, capsys):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = [GOOD]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = main(["build", "demo", "--no-prefect", "--set", "tasks.kind=jsonl", "--set", f"tasks.path={path}",
                 "--set", "engine.kind=fake", "--ray-address", f"127.0.0.1:{port}", "--no-progress"])
    assert code == 2 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in capsys.readouterr().err
    assert not (data_root / "datasets").exists()
