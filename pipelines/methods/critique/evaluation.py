"""`errata eval critique`: score a critic on first-error labels and publish the result as a dataset version.

The labelled set is a ProcessBench-format JSONL file (`problem`, `steps` (list of strings), `label` = the 0-based
index of the earliest wrong step, -1 if none; `id`, `final_answer_correct` optional), or a published critique
version's paths whose first wrong step is known (injected errors, references). Either way they become `problems`
and `paths` rows (a label L is `first_error_step` L+1: steps are 1-based here), and the `critique_eval` method runs
on them: the `critique` stage (the critic, any engine role config, without the reference answer) and `scores`
(ProcessBench's figures: accuracy on erroneous samples = first Wrong step exactly the label, accuracy on correct
samples = no Wrong step, their harmonic mean F1, parse rate, and the expected figures of a random-step critic),
written to the build-scope table `critic_scores` and the manifest summary. Critics compare in SQL::

    SELECT critic_model, subset, acc_erroneous, acc_correct, f1, parse_rate, random_f1
    FROM critique_eval.critic_scores
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path as FilePath
from typing import Any, Callable, Optional

from pipelines.catalog import Catalog
from pipelines.chain import check_chain
from pipelines.config import RecipeConfig, apply_override, data_root, recipe_model, validate_recipe
from pipelines.files import Root
from pipelines.inputs import Inputs, shard_inputs
from pipelines.plan import BuildPlan, make_stages
from pipelines.runner import choose_runner
from pipelines.staging import Staging
from schemas.errors import ConfigError, InputError
from schemas.registry import get_method
from schemas.rows import make_id
from stages.base import GlobalStage, StageStats

EVAL_METHOD = "critique_eval"
EVAL_INPUTS = ["problems", "paths"]


# --- scoring ------------------------------------------------------------------------------------------------------
def processbench_scores(items: list[dict]) -> dict[str, Any]:
    """ProcessBench's figures over items {label: true first wrong step (1-based) or None, predicted: the critique's
    first Wrong step or None, parse_ok, n_steps}. An unparsed critique is a miss on either side, never a
    prediction; the random baseline names one of (no error, step 1..n) uniformly."""
    err = [i for i in items if i["label"] is not None]
    cor = [i for i in items if i["label"] is None]
    def hit(i: dict) -> bool:
        return bool(i["parse_ok"]) and i["predicted"] == i["label"]

    def near(i: dict) -> bool:
        return bool(i["parse_ok"]) and i["predicted"] is not None and abs(i["predicted"] - i["label"]) <= 1

    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None                            # noqa: E731
    from pipelines.methods.critique.summary import harmonic
    acc_e, acc_c = mean([hit(i) for i in err]), mean([hit(i) for i in cor])
    ra_e = mean([1 / (max(1, i["n_steps"]) + 1) for i in err])
    ra_c = mean([1 / (max(1, i["n_steps"]) + 1) for i in cor])
    return {"erroneous": len(err), "correct": len(cor), "acc_erroneous": acc_e, "acc_correct": acc_c,
            "f1": harmonic(acc_e, acc_c), "within_1_erroneous": mean([near(i) for i in err]),
            "parse_rate": mean([bool(i["parse_ok"]) for i in items]), "random_acc_erroneous": ra_e,
            "random_acc_correct": ra_c, "random_f1": harmonic(ra_e, ra_c)}


class ScoresStage(GlobalStage):
    kind = "critique_scores"
    description = "ProcessBench's figures of the critic over the labelled paths (all, and per path source)"
    build_tables = ("critic_scores",)
    reads = {"critiques": ("critique_id", "path_id", "critic_model", "parse_ok", "first_wrong_step",
                           "true_first_error_step", "first_error_known", "path_source"),
             "paths": ("path_id", "steps")}

    def summarize(self, tables: dict[str, list[dict]], stats: StageStats) -> dict[str, list[dict]]:
        n_steps = {p["path_id"]: len(p.get("steps") or []) for p in tables.get("paths", [])}
        items: dict[tuple[str, str], list[dict]] = {}
        for c in tables.get("critiques", []):
            if not c.get("first_error_known"):
                continue
            item = {"label": c.get("true_first_error_step"), "predicted": c.get("first_wrong_step"),
                    "parse_ok": c.get("parse_ok"), "n_steps": n_steps.get(c["path_id"], 1)}
            for subset in ("all", c.get("path_source") or "unknown"):
                items.setdefault((c.get("critic_model") or "", subset), []).append(item)
        rows = []
        for (model, subset), its in sorted(items.items()):
            stats.count(f"scored_{subset}", len(its))
            rows.append({"score_id": make_id(model, subset, prefix="s-"), "critic_model": model, "subset": subset,
                         **processbench_scores(its), **self.lineage([])})
        stats.rows_in = stats.rows_out = sum(len(v) for (m, s), v in items.items() if s == "all")
        return {"critic_scores": rows}


# --- the labelled set -----------------------------------------------------------------------------------------------
def load_processbench(path: str, limit: Optional[int] = None) -> dict[str, list[dict]]:
    """problems + paths rows of a ProcessBench-format JSONL file; bad input raises InputError naming the file,
    line and field."""
    p = FilePath(path).expanduser()
    if not p.is_file():
        raise InputError("no such file", path=str(path), field="--data")
    source = p.name
    problems: dict[str, dict] = {}
    paths: list[dict] = []
    with open(p, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if limit is not None and len(paths) >= limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not JSON: {e.msg}", path=str(path), line=line_no) from None
            if not isinstance(rec, dict):
                raise InputError("expected a JSON object", path=str(path), line=line_no)
            q, steps, label = rec.get("problem"), rec.get("steps"), rec.get("label")
            if not isinstance(q, str) or not q.strip():
                raise InputError("expected a non-empty string", path=str(path), line=line_no, field="problem")
            if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
                raise InputError("expected a non-empty list of strings", path=str(path), line=line_no,
                                 field="steps")
            if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
                raise InputError(f"expected an integer from -1 to {len(steps) - 1} (the 0-based index of the "
                                 f"earliest wrong step), got {label!r}", path=str(path), line=line_no, field="label")
            ident = str(rec.get("id", line_no))
            pid = make_id(source, q, prefix="p-")
            problems.setdefault(pid, {"problem_id": pid, "source": source, "split": "test", "source_index": line_no,
                                      "question": q, "reference_solution": None, "reference_answer": "",
                                      "parent_ids": []})
            fac = rec.get("final_answer_correct")
            paths.append({"path_id": make_id(source, ident, prefix="pa-"), "problem_id": pid,
                          "source": "processbench", "origin": f"{source}:{ident}"
                          + (f" ({rec['generator']})" if rec.get("generator") else ""),
                          "text": "\n".join(steps),
                          "steps": [{"idx": k, "text": s, "action": None, "observation": None}
                                    for k, s in enumerate(steps, 1)],
                          "first_error_step": None if label < 0 else label + 1, "first_error_known": True,
                          "is_correct": fac if isinstance(fac, bool) else None, "verifier": source,
                          "answer_parse_ok": isinstance(fac, bool), "parent_ids": [pid]})
    if not paths:
        raise InputError("no labelled rows", path=str(path))
    return {"problems": list(problems.values()), "paths": paths}


def load_from_version(catalog: Catalog, ref: str, limit: Optional[int] = None) -> tuple[dict[str, list[dict]], str]:
    """problems + the live paths with a known first wrong step of a published critique version (ids kept)."""
    m = catalog.resolve(ref)
    if "paths" not in m.tables:
        raise ConfigError(f"--version {m.ref} has no table 'paths' (is it a critique version?)")
    paths = [dict(p) for p in catalog.read_table(m, "paths").to_pylist()
             if p.get("first_error_known") and p.get("drop_reason") is None]
    paths.sort(key=lambda p: p["path_id"])
    paths = paths[:limit] if limit is not None else paths
    if not paths:
        raise InputError(f"{m.ref} has no kept paths with a known first wrong step")
    keep = {p["problem_id"] for p in paths}
    problems = [p for p in catalog.read_table(m, "problems").to_pylist() if p["problem_id"] in keep]
    return {"problems": problems, "paths": paths}, m.ref


# --- the run --------------------------------------------------------------------------------------------------------
def eval_config(dataset: str, overrides: list[str], root: Optional[str]) -> RecipeConfig:
    data: dict[str, Any] = {
        "dataset": dataset, "method": EVAL_METHOD,
        "description": "a critic scored on first-error labels (errata eval critique)",
        "engines": {"critic": {"kind": "vllm", "model": "embedded"}},
        "critique": {"show_reference": False}, "execution": {"shard_size": 32}}
    if root:
        data["storage"] = {"root": root}
    model = recipe_model(EVAL_METHOD)
    for o in overrides:
        apply_override(data, o, model)
    return validate_recipe(data, source="errata eval critique")


def plan_eval(config: RecipeConfig, tables: dict[str, list[dict]], parents: list[str], describe: dict,
              log: Callable[[str], None] = print) -> BuildPlan:
    """plan_build for a labelled set given as tables (not a task source): the same checks, staging and resume;
    the staging key hashes the recipe and the labelled rows."""
    stages = make_stages(get_method(config.method), config)
    check_chain(stages, EVAL_INPUTS, list(config.engines))
    root = Root(data_root(config))
    ids = hashlib.sha256("\n".join(sorted(p["path_id"] + str(p["first_error_step"]) for p in tables["paths"])
                                   ).encode()).hexdigest()[:12]
    staging = Staging(root, config.dataset, f"b-{config.config_hash()}-{ids}")
    rec, resumed = staging.open(config.model_dump(mode="json"))
    run_id = rec["run_id"]
    import datetime as dt
    now = dt.datetime.now(dt.timezone.utc)
    for t in EVAL_INPUTS:
        for r in tables[t]:
            if not r.get("run_id"):
                r.update(run_id=run_id, method=config.method, created_at=now)
    inputs = Inputs(tables, parents, describe)
    shards = shard_inputs(inputs, config.execution.shard_size)
    for sid, sh in enumerate(shards):
        if not staging.inputs_done(sid):
            staging.write_inputs(sid, sh)
    plan = BuildPlan(config, root, staging, run_id, resumed, list(range(len(shards))), describe, parents,
                     list(EVAL_INPUTS))
    plan.runner, plan.runner_reason = choose_runner(config.execution.runner, config.execution.ray_address)
    if resumed:
        log(f"resuming {run_id}")
    return plan


def run_eval(*, data: Optional[str] = None, version: Optional[str] = None, dataset: str = "critique_eval",
             overrides: Optional[list[str]] = None, root: Optional[str] = None, limit: Optional[int] = None,
             progress: bool = False, log: Callable[[str], None] = print):
    """Score the critic of `overrides` (default: the embedded model) on a ProcessBench-format file or a critique
    version's labelled paths; publish the scored critiques as a new version of `dataset`. Returns BuildResult."""
    from pipelines.build import run_build
    from stages.engines.model_prep import check_model
    if (data is None) == (version is None):
        raise ConfigError("errata eval critique needs exactly one of --data FILE or --version DATASET[@N]")
    config = eval_config(dataset, list(overrides or []), root)
    if data is not None:
        tables, parents = load_processbench(data, limit), []
        describe = {"kind": "processbench", "path": str(data), "rows": len(tables["paths"]),
                    "sha256": hashlib.sha256(FilePath(data).expanduser().read_bytes()).hexdigest()}
    else:
        tables, ref = load_from_version(Catalog(Root(data_root(config))), version, limit)
        parents = [ref]
        describe = {"kind": "version", "ref": ref, "rows": len(tables["paths"])}
    for role, eng in config.engines.items():
        if eng.kind in ("vllm", "transformers"):
            check_model(eng.model, field=f"engines.{role}.model")
    plan = plan_eval(config, tables, parents, describe, log)
    return run_build(plan, progress=progress, log=log)
