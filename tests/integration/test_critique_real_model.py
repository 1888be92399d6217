"""`errata build critique` and `errata eval critique` end to end on the real embedded model (actor and critic: one
engine), and the critique exports trained on by TRL unchanged. The 135M critic is near chance, so these check the
machinery, the closed-loop invariants on real output and the scoring, not the yield."""
import json

import pytest

from pipelines.methods.critique.evaluation import processbench_scores
from pipelines.methods.critique.summary import critique_yield, first_error_scores
from tests.conftest import MODELS_DIR, REPO, cli_env, errata, version_tables
from tests.unit.test_critique import check_invariants

pytestmark = pytest.mark.integration

PROCESSBENCH = REPO.parent / "shared" / "data" / "processbench_gsm8k.jsonl"
SMALL = ["--set", "tasks.count=3", "--set", "tasks.max_steps=3", "--set", "generate.max_tokens=128",
         "--set", "critique.max_tokens=192", "--set", "refine.max_tokens=128", "--no-progress", "--no-prefect"]




def _labelled_items(critiques, paths):
    n = {p["path_id"]: len(p["steps"]) for p in paths}
    return [{"label": c["true_first_error_step"], "predicted": c["first_wrong_step"], "parse_ok": c["parse_ok"],
             "n_steps": n[c["path_id"]]} for c in critiques if c["first_error_known"]]


def test_build_critique_on_the_embedded_model(tmp_path):
    root = tmp_path / "data"
    p = errata("build", "critique", *SMALL, env=cli_env(root))
    assert "published critique@1" in p.stdout and "yield: paths" in p.stdout
    m, t = version_tables(root, "critique")
    assert {p["source"] for p in t["paths"]} == {"actor", "injected", "reference"}
    kept, kept_refs = check_invariants(t)
    crit = t["critiques"]
    assert crit and all(c["raw_text"] for c in crit)
    # the constrained format on the real model: parsed critiques have a verdict per step shown
    paths = {p["path_id"]: p for p in t["paths"]}
    for c in crit:
        if c["parse_ok"]:
            assert len(c["step_labels"]) == len(paths[c["path_id"]]["steps"])
            assert c["final_verdict"] is not None and c["agrees"] == (c["final_verdict"] == c["path_is_correct"])
    # the figures in the manifest are those of the rows
    s = first_error_scores(m.stages["critique"])
    want = processbench_scores(_labelled_items(crit, t["paths"]))
    for k in ("erroneous", "correct", "acc_erroneous", "acc_correct", "f1", "random_acc_erroneous", "random_f1"):
        assert s[k] == want[k], k
    y = critique_yield(m.stages)
    assert y["critiques"] == len(crit) and y["parsed"] == sum(c["parse_ok"] for c in crit)
    assert y["critiques_kept"] == len(kept) and y["refinements_kept"] == len(kept_refs)
    assert y["refinements"] == len(t["refinements"]) > 0       # every critique of a wrong path is refined
    # stepwise labels on real output: monotone, false exactly from the kept critique's first Wrong step
    from pipelines.export import export
    r = export(str(root), m.ref, "stepwise", str(tmp_path / "stepwise"))
    assert r.rows == len(kept)
    import pyarrow.parquet as pq
    by_id = {c["critique_id"]: c for c in kept}
    for f in r.files:
        for row in pq.read_table(f).to_pylist():
            labels, fw = row["labels"], by_id[row["critique_id"]]["first_wrong_step"]
            assert labels == [fw is None or i < fw for i in range(1, len(labels) + 1)]
            assert labels == sorted(labels, reverse=True)            # once false, false to the end
    print("real-model critique yield:", json.dumps(y), "| critic:", m.summary["critic on labelled paths"])


@pytest.mark.skipif(not PROCESSBENCH.exists(), reason="shared data not present (../shared/data/processbench_gsm8k.jsonl)")
def test_eval_critique_on_20_processbench_rows(tmp_path):
    rows = [json.loads(x) for x in PROCESSBENCH.read_text().splitlines()]
    pick = [r for r in rows if r["label"] == -1][:10] + [r for r in rows if r["label"] >= 0][:10]
    data = tmp_path / "pb20.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pick))
    root = tmp_path / "data"
    p = errata("eval", "critique", "--data", str(data), "--set", "critique.max_tokens=256", "--no-progress",
               env=cli_env(root))
    assert "published critique_eval@1" in p.stdout
    m, t = version_tables(root, "critique_eval")
    assert len(t["paths"]) == 20 and len(t["critiques"]) == 20
    by_text = {r["problem"]: r for r in pick}
    q = {p["problem_id"]: p["question"] for p in t["problems"]}
    for path in t["paths"]:         # labels carried 0-based -> 1-based
        src = by_text[q[path["problem_id"]]]
        assert [s["text"] for s in path["steps"]] == src["steps"] or len({r["problem"] for r in pick}) < 20
    scores = {s["subset"]: s for s in t["critic_scores"]}["all"]
    want = processbench_scores(_labelled_items(t["critiques"], t["paths"]))
    assert (scores["erroneous"], scores["correct"]) == (10, 10)
    for k, v in want.items():
        assert scores[k] == v, k
    assert m.summary["scores"]["f1"] == scores["f1"] and 0 <= scores["random_f1"] <= 1
    print("real-model eval on 20 ProcessBench rows:", json.dumps({k: scores[k] for k in want}))


def _trl_one_step(kind, data_dir, out_dir):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ds = datasets.load_dataset("parquet", data_files=f"{data_dir}/*.parquet", split="train")
    model_dir = str(MODELS_DIR / "SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    tok = AutoTokenizer.from_pretrained(model_dir)
    common = dict(output_dir=str(out_dir), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
                  fp16=False, report_to="none", save_strategy="no", logging_steps=1, learning_rate=1e-5)
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        trainer = DPOTrainer(model=model, args=DPOConfig(max_length=768, **common), train_dataset=ds,
                             processing_class=tok)
    else:
        from trl import SFTConfig, SFTTrainer
        trainer = SFTTrainer(model=model, args=SFTConfig(max_length=768, **common), train_dataset=ds,
                             processing_class=tok)
    return trainer.train().training_loss


def test_exports_train_with_trl_unchanged(tmp_path):
    """critic-sft, actor-sft and sft-tokenized (SFTTrainer) and critic-dpo (DPOTrainer) train one step as exported
    (the rows come from a fake-engine build: the 135M critic keeps too few); stepwise has no trainer in TRL 1.16
    (PRMTrainer is gone), so its columns are loaded as TRL's stepwise-supervision type reads them."""
    import datasets

    import tests.unit.critique_fakes  # noqa: F401
    from pipelines.build import build
    from pipelines.config import load_recipe
    from pipelines.export import export
    root = tmp_path / "data"
    m = build(load_recipe("critique", [f"storage.root={root}", "execution.runner=local", "tasks.count=4",
                                       "engines.actor.kind=fake", "engines.actor.fake_script=critique",
                                       "engines.critic.kind=fake", "engines.critic.fake_script=critique"]),
              progress=False, log=lambda *a: None).manifest
    opts = {"sft-tokenized": {"tokenizer": str(MODELS_DIR / "SmolLM2-135M-Instruct")}}
    for fmt, kind in (("critic-sft", "sft"), ("actor-sft", "sft"), ("sft-tokenized", "sft"), ("critic-dpo", "dpo")):
        out = tmp_path / fmt
        r = export(str(root), m.ref, fmt, str(out), options=opts.get(fmt, {}))
        assert r.rows > 0, fmt
        loss = _trl_one_step(kind, out, tmp_path / f"run-{fmt}")
        assert loss == loss and loss > 0, fmt          # a real number
    export(str(root), m.ref, "stepwise", str(tmp_path / "stepwise"))
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "stepwise" / "*.parquet"), split="train")
    assert ds.features["prompt"].dtype == "string"
    assert ds.features["completions"].feature.dtype == "string" and ds.features["labels"].feature.dtype == "bool"
    for row in ds:
        assert len(row["completions"]) == len(row["labels"])
