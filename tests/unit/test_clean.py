"""Clean data: repeated problems flagged at task loading (every task kind), near-duplicate rows (MinHash LSH, global,
shard by shard) and decontamination against evaluation sets; counts per reason in the manifest; resume after a
kill during a global cleaning stage. Builds run on the scripted fake engine, in process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, cli_env, published_manifest, published_rows, write_gsm8k_style

LONG = ("Natalia sold clips to {a} of her friends in April, and then she sold half as many clips in May to the "
        "neighbours who live on the same street. How many clips did Natalia sell altogether in April and May?")


def _line(q: str, ans: int) -> str:
    return json.dumps({"question": q, "answer": f"#### {ans}"})


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _recipe(fake_recipe, tasks: Path, keep_duplicates: bool = False, **over):
    return fake_recipe(tasks={"path": str(tasks), **({"keep_duplicates": True} if keep_duplicates else {})}, **over)


def _build(cfg):
    from pipelines.build import build
    logs: list[str] = []
    return build(cfg, progress=False, log=logs.append), logs


# --- repeated problems at task loading --------------------------------------------------------------------------
def test_jsonl_with_one_line_five_times_gives_one_live_problem_and_its_attempts_only(tmp_path, fake_recipe,
                                                                                     data_root):
    line = _line("What is 2 plus 3? [gold=5]", 5)
    tasks = _write(tmp_path / "five.jsonl", [line] * 5 + [_line("What is 4 plus 4? [gold=8]", 8)])
    res, _ = _build(_recipe(fake_recipe, tasks, n_samples=3))
    m = res.manifest
    problems = published_rows(data_root, "problems", "fake")
    assert len(problems) == 6                                   # every copy stays in its table ...
    assert sorted(p["source_index"] for p in problems if p["drop_reason"] == "duplicate_problem") == [2, 3, 4, 5]
    attempts = published_rows(data_root, "attempts", "fake")
    assert len(attempts) == 2 * 3                               # ... but only the first copy is worked on
    assert {a["problem_id"] for a in attempts} == {p["problem_id"] for p in problems if not p["drop_reason"]}
    assert m.inputs["duplicate_problems"] == 4 and m.inputs["problems"] == 6
    assert m.drops["problems"] == {"duplicate_problem": 4}


def test_keep_duplicates_keeps_every_copy(tmp_path, fake_recipe, data_root):
    tasks = _write(tmp_path / "five.jsonl", [_line("What is 2 plus 3? [gold=5]", 5)] * 5)
    m = _build(_recipe(fake_recipe, tasks, keep_duplicates=True, n_samples=2))[0].manifest
    assert m.inputs["duplicate_problems"] == 0 and not m.drops      # nor does the dedup stage drop their attempts
    attempts = published_rows(data_root, "attempts", "fake")
    assert len(attempts) == 10 and not any(a["drop_reason"] for a in attempts)


def test_duplicates_are_flagged_for_every_file_and_dataset_kind(tmp_path, data_root):
    from pipelines.files import Root
    from pipelines.inputs import load_inputs
    from stages.tasks import TaskSourceConfig
    recs = [{"question": "Same  question, twice?", "answer": "#### 1"}, {"question": "other", "answer": "#### 2"},
            {"question": "same question, TWICE?", "answer": "#### 1"}]
    jl = _write(tmp_path / "t.jsonl", [json.dumps(r) for r in recs])
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
    for kind, path in [("jsonl", jl), ("parquet", tmp_path / "t.parquet"), ("hf", jl)]:
        inputs = load_inputs(TaskSourceConfig(kind=kind, path=str(path)), None, Root(str(data_root)))
        reasons = [p.get("drop_reason") for p in inputs.tables["problems"]]
        assert reasons == [None, None, "duplicate_problem"], kind
        assert inputs.describe["duplicate_problems"] == 1
    builtin = load_inputs(TaskSourceConfig(kind="builtin", count=200), None, Root(str(data_root)))
    assert builtin.describe["duplicate_problems"] == 0 and len(builtin.tables["problems"]) == 200


def test_env_tasks_are_repeats_only_with_the_same_task_config_and_seed():
    from stages.tasks import flag_duplicate_problems

    def task(instruction, config, seed=1):
        rec = json.dumps({"kind": "craft", "config": {}, "task": {"task_id": "x", "seed": seed, "config": config,
                                                                   "instruction": instruction}})
        return {"question": instruction, "env": "craft", "env_config_json": rec}
    rows = [task("craft a stick", {"world": 1}), task("craft a stick", {"world": 2}), task("Craft a  stick",
                                                                                          {"world": 1}),
            task("craft a stick", {"world": 1}, seed=2)]      # another seed of the same game: another episode
    assert flag_duplicate_problems(rows) == 1
    assert [r.get("drop_reason") for r in rows] == [None, None, "duplicate_problem", None]


def test_version_input_flags_repeats_and_their_rows(tmp_path, fake_recipe, data_root):
    tasks = _write(tmp_path / "t.jsonl", [_line("What is 2 plus 3? [gold=5]", 5)] * 3)
    _build(_recipe(fake_recipe, tasks, keep_duplicates=True, n_samples=2))
    from pipelines.files import Root
    from pipelines.inputs import load_inputs
    from stages.tasks import TaskSourceConfig
    inputs = load_inputs(TaskSourceConfig(kind="version", ref="fake@1", table="attempts"), None,
                         Root(str(data_root)))
    assert inputs.describe["duplicate_problems"] == 2
    live = {p["problem_id"] for p in inputs.tables["problems"] if not p.get("drop_reason")}
    assert len(live) == 1
    for a in inputs.tables["attempts"]:
        assert (a.get("drop_reason") is None) == (a["problem_id"] in live)


# --- near duplicates ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["rensa", "datasketch"])
def test_near_dup_stage_finds_planted_near_and_exact_repeats_across_shards(backend):
    from stages.near_dup import NearDupConfig, NearDuplicates
    st = NearDuplicates(NearDupConfig(table="problems", column="question", backend=backend))
    base = [LONG.format(a=48), "A train leaves the station at nine and travels at sixty miles per hour for three "
            "hours before it stops to refuel at a small town on the plains.",
            "Tom has a garden with twelve rows of carrots and each row holds fifteen carrots that he waters every "
            "morning before school."]
    rows = [{"problem_id": f"p{i}", "question": q} for i, q in enumerate(base)]
    shard2 = [{"problem_id": "exact", "question": base[0].upper()},                            # exact (normalized)
              {"problem_id": "near", "question": base[1] + " Then it goes on."},              # words added
              {"problem_id": "other", "question": "Completely different: count the sheep in the field."},
              {"problem_id": "gone", "question": base[2], "drop_reason": "truncated"}]          # dropped: not seen
    st.scan({"problems": rows})
    st.scan({"problems": shard2})
    drops = st.decide({})
    assert drops == {"exact": "near_duplicate", "near": "near_duplicate"}
    from stages.base import StageStats
    stats = StageStats()
    found = st.summarize({}, stats)["near_duplicates"]
    by_row = {r["row_id"]: r for r in found}
    assert set(by_row) == {"p0", "exact", "p1", "near"}
    assert by_row["exact"]["cluster_id"] == by_row["p0"]["cluster_id"] != by_row["near"]["cluster_id"]
    assert by_row["p0"]["kept"] and not by_row["exact"]["kept"] and by_row["near"]["kept_row_id"] == "p1"
    assert 0.7 < by_row["near"]["similarity"] < 1.0 and by_row["exact"]["similarity"] == 1.0
    assert stats.counts["rows_scanned"] == 6 and stats.counts["clusters"] == 2


def test_near_dup_within_a_column_compares_only_rows_of_the_same_value():
    from stages.near_dup import NearDupConfig, NearDuplicates
    st = NearDuplicates(NearDupConfig(within="problem_id"))
    text = "Step 1: add the numbers. Step 2: carry the one. The answer is: 7"
    st.scan({"attempts": [{"attempt_id": "a", "problem_id": "p1", "completion": text},
                          {"attempt_id": "b", "problem_id": "p2", "completion": text},
                          {"attempt_id": "c", "problem_id": "p1", "completion": text + "."}]})
    assert st.decide({}) == {"c": "near_duplicate"}


def test_minhash_similarity_matches_the_library_estimate():
    from rensa import RMinHash
    from stages.minhash import MinHasher, shingles
    h = MinHasher("rensa", 128, 3)
    a, b = LONG.format(a=48), LONG.format(a=48).replace("neighbours", "cousins")
    (ma, sa), (mb, sb) = h.sketch(a), h.sketch(b)
    assert abs(float((sa == sb).mean()) - ma.jaccard(mb)) < 1e-9
    true = len(set(shingles(a, 3)) & set(shingles(b, 3))) / len(set(shingles(a, 3)) | set(shingles(b, 3)))
    assert abs(ma.jaccard(mb) - true) < 0.15
    assert isinstance(ma, RMinHash)


def test_near_dup_build_on_problems_runs_first_and_a_clean_set_loses_nothing(tmp_path, fake_recipe, data_root):
    lines = [_line(LONG.format(a=48) + " [gold=72]", 72), _line(LONG.format(a=48) + " Answer it. [gold=72]", 72)]
    lines += [_line(f"What is {i} plus {i + 7}? [gold={2 * i + 7}]", 2 * i + 7) for i in range(3)]
    tasks = _write(tmp_path / "t.jsonl", lines)
    cfg = _recipe(fake_recipe, tasks, n_samples=2,
                  clean={"near_dup": {"table": "problems", "column": "question"}})
    res, logs = _build(cfg)
    m = res.manifest
    assert list(m.stages)[0] == "near_dup"
    assert m.stages["near_dup"]["dropped_near_duplicate"] == 1
    assert m.drops["problems"] == {"near_duplicate": 1}
    assert len(published_rows(data_root, "attempts", "fake")) == 4 * 2          # the repeat got no attempts
    assert len(published_rows(data_root, "near_duplicates", "fake")) == 2
    assert any(s.startswith("near_dup: global, in 5, out 4") for s in logs)

    clean = _write(tmp_path / "clean.jsonl", lines[:1] + lines[2:])
    cfg2 = _recipe(fake_recipe, clean, n_samples=2, dataset="fake_clean",
                   clean={"near_dup": {"table": "problems", "column": "question"}})
    m2 = _build(cfg2)[0].manifest
    assert m2.stages["near_dup"]["in"] == m2.stages["near_dup"]["out"] == 4 and not m2.drops.get("problems")
    assert m2.tables["near_duplicates"].rows == 0


def test_clean_section_is_one_line_for_any_method_and_checked_before_any_work(tmp_path):
    from pipelines.config import load_recipe
    from pipelines.plan import check_recipe, stage_names
    from schemas.errors import ConfigError
    for recipe, table, column in [("demo", "attempts", "completion"), ("lemma", "revisions", "text"),
                                  ("agent_demo", "problems", "question")]:
        cfg = load_recipe(recipe, [f"clean.near_dup.table={table}", f"clean.near_dup.column={column}"])
        names = stage_names(cfg)
        assert ("near_dup" == names[0]) == (table == "problems") and "near_dup" in names
        check_recipe(cfg)
    with pytest.raises(ConfigError, match="column 'nope'"):
        check_recipe(load_recipe("demo", ["clean.near_dup.column=nope"]))
    with pytest.raises(ConfigError, match="sets"):
        load_recipe("demo", ["clean.decontaminate.ngram=13"])


# --- decontamination ----------------------------------------------------------------------------------------------
def _eval_set(tmp_path) -> Path:
    return _write(tmp_path / "evalset.jsonl", [
        _line(LONG.format(a=48), 72),
        _line("A farmer has seven cows and buys four more cows at the market on a sunny morning in early spring. "
              "How many cows does the farmer have now in total?", 11),
        _line("Short item.", 1)])


def test_decontaminate_drops_planted_problems_and_records_the_eval_item(tmp_path, fake_recipe, data_root):
    ev = _eval_set(tmp_path)
    lines = [
        _line("Here is a question: " + LONG.format(a=48) + " Explain. [gold=72]", 72),                 # 13-gram
        _line("A farmer has seven cows and buys four more cows at the market on a sunny morning in early spring. "
              "How many cows does the farmer have now? [gold=11]", 11),                                 # n-gram too
        _line("A farmer has seven cows and gets four more cows at the market on a sunny morning in late spring. "
              "How many cows does the farmer have then in total? [gold=11]", 11),    # paraphrase: no 13-gram shared
        _line("Short item. What is 1 plus 1? [gold=2]", 2)]                                            # too short
    lines += [_line(f"What is {i} plus {i + 7}? [gold={2 * i + 7}]", 2 * i + 7) for i in range(3)]
    tasks = _write(tmp_path / "t.jsonl", lines)
    cfg = _recipe(fake_recipe, tasks, n_samples=2,
                  clean={"decontaminate": {"sets": [{"name": "evalx", "path": str(ev)}], "threshold": 0.4,
                                                   "shingle_size": 3}})
    m = _build(cfg)[0].manifest
    assert list(m.stages)[0] == "decontaminate"
    assert m.drops["problems"] == {"contaminated:evalx": 3}
    found = {r["row_id"]: r for r in published_rows(data_root, "contamination", "fake")}
    problems = {p["source_index"]: p for p in published_rows(data_root, "problems", "fake")}
    assert set(found) == {problems[i]["problem_id"] for i in (1, 2, 3)}
    assert [found[problems[i]["problem_id"]]["eval_id"] for i in (1, 2, 3)] == ["1", "2", "2"]
    assert [found[problems[i]["problem_id"]]["match"] for i in (1, 2, 3)] == ["ngram", "ngram", "near_duplicate"]
    assert problems[4]["drop_reason"] is None
    sets = m.models["decontaminate"]["eval_sets"]
    import hashlib
    assert sets[0]["name"] == "evalx" and sets[0]["rows"] == 3
    assert sets[0]["file_sha256"] == hashlib.sha256(ev.read_bytes()).hexdigest() and len(sets[0]["sha256"]) == 64
    assert len(published_rows(data_root, "attempts", "fake")) == 4 * 2


def test_decontaminate_outputs_and_a_clean_set_loses_nothing(tmp_path, fake_recipe, data_root):
    ev = _write(tmp_path / "ev.jsonl", [_line("Step 1: Read the problem carefully (sample 0). Step 2: Work out the "
                                              "quantities involved.", 1)])
    tasks = write_gsm8k_style(tmp_path / "t.jsonl", 3)
    cfg = _recipe(fake_recipe, tasks, n_samples=2,
                  clean={"decontaminate": {"sets": [{"name": "ev", "path": str(ev)}],
                                           "outputs": "attempts.completion"}})
    m = _build(cfg)[0].manifest
    names = list(m.stages)
    assert names[0] == "decontaminate" and names[-1] == "decontaminate_outputs"
    assert m.stages["decontaminate"]["in"] == m.stages["decontaminate"]["out"] == 3     # questions: clean
    attempts = published_rows(data_root, "attempts", "fake")
    hit = [a for a in attempts if a["drop_reason"] == "contaminated:ev"]
    assert hit and all("(sample 0)" in a["completion"] for a in hit)
    assert m.drops["attempts"]["contaminated:ev"] == len(hit)
    assert {r["table"] for r in published_rows(data_root, "contamination", "fake")} == {"attempts"}


# --- resume after a kill during a global cleaning stage ----------------------------------------------------------
def test_kill_during_the_near_dup_stage_then_rerun_gives_the_rows_of_an_uninterrupted_build(tmp_path):
    n = 160
    lines = [_line(f"Question number {i}: what is {i} plus {i}? [gold={2 * i}]", 2 * i) for i in range(n)]
    tasks = _write(tmp_path / "t.jsonl", lines)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: kd\ntasks: {{kind: jsonl, path: {tasks}}}\n"
                      "engines: {student: {kind: fake, fake_script: mixed}}\n"
                      "generate: {n: 2, max_tokens: 64}\nexecution: {runner: local, shard_size: 1}\n"
                      "clean: {near_dup: {table: attempts, column: completion}}\n")
    args = [sys.executable, "-m", "flows.cli", "build", str(recipe), "--no-prefect", "--no-progress"]

    def rows(root):
        return sorted((a["attempt_id"], a["drop_reason"]) for a in published_rows(root, "attempts", "kd"))
    ref_root, root = tmp_path / "ref", tmp_path / "data"
    subprocess.run(args, env=cli_env(ref_root), cwd=REPO, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(args, env=cli_env(root), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed_at = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        done = list((root / "staging").glob("kd/*/shards/*/near_dup/_SUCCESS"))
        if done:
            os.kill(proc.pid, signal.SIGKILL)
            killed_at = len(done)
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_at is not None and killed_at < n, "the build was not killed inside the near_dup stage"
    assert not (root / "datasets" / "kd").exists() or not list((root / "datasets" / "kd").glob("*/manifest.json"))
    subprocess.run(args, env=cli_env(root), cwd=REPO, check=True, capture_output=True, timeout=600)
    assert rows(root) == rows(ref_root)
    m, ref = published_manifest(root, "kd"), published_manifest(ref_root, "kd")
    assert m["drops"] == ref["drops"] and m["drops"]["attempts"]["near_duplicate"] > 0
    assert m["shards"]["resumed"] == n

    def clusters(r):
        return sorted((x["row_id"], x["cluster_id"], x["kept"]) for x in published_rows(r, "near_duplicates", "kd"))
    assert clusters(root) == clusters(ref_root) and clusters(root)


def test_eval_sets_need_only_questions_and_load_as_files_or_datasets(tmp_path):
    from stages.decontaminate import EvalIndex, DecontaminateConfig, load_eval_set
    recs = [{"id": "q-17", "problem": LONG.format(a=30)}, {"id": "q-18", "problem": "Another question of the set "
                                                                                   "with enough words in it."}]
    jl = _write(tmp_path / "ev.jsonl", [json.dumps(r) for r in recs])
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "ev.parquet")
    for kind, path in [("jsonl", jl), ("parquet", tmp_path / "ev.parquet"), ("hf", jl)]:
        items, desc = load_eval_set(_eval_cfg(kind, path))
        assert [i["eval_id"] for i in items] == ["q-17", "q-18"] and desc["rows"] == 2, kind
        assert desc["kind"] == kind and len(desc["sha256"]) == 64
    idx = EvalIndex(DecontaminateConfig(sets=[_eval_cfg("jsonl", jl)]))
    m = idx.match("Please solve: " + LONG.format(a=30))
    assert m["eval_id"] == "q-17" and m["match"] == "ngram" and m["eval_set"] == "ev_jsonl"
    assert idx.match("What is 2 plus 2?") is None


def _eval_cfg(kind, path):
    from stages.decontaminate import EvalSetConfig
    return EvalSetConfig(name=f"ev_{kind}", kind=kind, path=str(path), id_field="id")


def test_stage_by_stage_gives_the_same_drops_as_streaming(tmp_path, fake_recipe, data_root):
    """The Prefect path runs stage by stage (run_stage per stage); the cleaning stages are stages like the others."""
    from pipelines.build import BuildSteps, build
    from pipelines.execute import run_stage
    ev = _eval_set(tmp_path)
    lines = [_line("Here is a question: " + LONG.format(a=48) + " [gold=72]", 72)] * 2
    lines += [_line(f"What is {i} plus {i + 7}? [gold={2 * i + 7}]", 2 * i + 7) for i in range(4)]
    tasks = _write(tmp_path / "t.jsonl", lines)
    clean = {"decontaminate": {"sets": [{"name": "ev", "path": str(ev)}]},
             "near_dup": {"table": "attempts", "column": "completion", "within": "problem_id"}}
    a = _build(_recipe(fake_recipe, tasks, n_samples=3, dataset="streamed", clean=clean))[0].manifest
    b = build(_recipe(fake_recipe, tasks, n_samples=3, dataset="staged", clean=clean), progress=False,
              log=lambda *x: None, steps=BuildSteps(run_stage=run_stage)).manifest
    assert a.drops == b.drops and a.drops["problems"] == {"contaminated:ev": 1, "duplicate_problem": 1}
    assert list(a.stages) == list(b.stages) == ["decontaminate", "generate", "verify", "filter", "dedup", "near_dup"]
    assert a.tables["near_duplicates"].rows == b.tables["near_duplicates"].rows
