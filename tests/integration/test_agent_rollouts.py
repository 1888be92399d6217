"""`errata build agent_demo` on the real embedded model: craft episodes (small tasks) with gold paths, exported as
`sft` and `sft-tokenized` and trained on for 2 steps by TRL's SFTTrainer unchanged; TextWorldExpress coin; a
user's env by class path (from this test package) whose JVM is killed mid-episode: an error row, the build goes
on. Small on purpose: the real model is slow here."""
import json
import math

import pytest

from tests.conftest import MODELS_DIR, cli_env, errata, published_manifest, published_rows

pytestmark = pytest.mark.integration

SMALL = ["--set", "rollout.max_steps=4", "--set", "rollout.max_tokens=48", "--no-progress"]


def _env(root):
    return cli_env(root)


def _manifest(root, dataset="agent_demo", version=1):
    return published_manifest(root, dataset, version)


def _rows(root, table, dataset="agent_demo", version=1):
    return published_rows(root, table, dataset, version)


@pytest.fixture(scope="module")
def craft(tmp_path_factory):
    root = tmp_path_factory.mktemp("agents") / "data"
    p = errata("build", "agent_demo", "--set", "tasks.count=4", "--set", "execution.shard_size=2", *SMALL,
               env=_env(root))
    return root, p.stdout


def test_craft_episodes_on_the_real_model(craft):
    root, out = craft
    assert "published agent_demo@1" in out
    man = _manifest(root)
    traj, errors = _rows(root, "trajectories"), _rows(root, "errors")
    policy, gold = [t for t in traj if not t["gold"]], [t for t in traj if t["gold"]]
    assert len(policy) + len(errors) == 4 and len(gold) == 4 and all(t["success"] for t in gold)
    assert all(t["model"] == "embedded:SmolLM2-135M-Instruct" and t["engine"] == "vllm" for t in policy)
    st = man["stages"]["rollout"]
    c = st["counts"]
    assert c["turns"] == c.get("parse_ok", 0) + c.get("unparsed", 0) == sum(t["n_steps"] for t in policy)
    assert st["completion_tokens"] > 0 and man["models"]["rollout"]["token_counter"].startswith("tokenizer:")
    for t in policy:
        assert 1 <= t["n_steps"] <= 4 and t["messages"][1]["content"] == "OK"
        assert t["n_unparsed"] == sum(not s["parse_ok"] for s in t["steps"])
        assert all(s["raw_text"] == m["content"] for s, m in zip(t["steps"], t["messages"][3::2]))
        assert all(s["parse_ok"] or s["invalid"] for s in t["steps"])          # unparsed: the env said invalid
        assert t["prompt_tokens"] > 0 and t["completion_tokens"] > 0
    (eng,) = man["engines"].values()
    assert eng["starts"] == 1 and eng["roles"] == ["policy"]


def _trl_two_steps(data_dir, out_dir) -> float:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    ds = datasets.load_dataset("parquet", data_files=f"{data_dir}/*.parquet", split="train")
    model_dir = str(MODELS_DIR / "SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = SFTConfig(output_dir=str(out_dir), max_steps=2, per_device_train_batch_size=2, max_length=1024,
                    use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1,
                    learning_rate=1e-5)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    return result.training_loss


def test_exports_carry_loss_and_train_with_trl_unchanged(craft, tmp_path):
    import datasets
    import pyarrow.parquet as pq

    from tests.unit.test_agent_exports import check_labels
    from stages.agents.tokens import load_tokenizer
    root, _ = craft
    env = _env(root)
    errata("export", "agent_demo", "--format", "sft", "--out", str(tmp_path / "sft"), "--option", "include=all",
           env=env)
    errata("export", "agent_demo", "--format", "sft-tokenized", "--tokenizer", "embedded", "--option",
           "include=all", "--out", str(tmp_path / "tok"), env=env)
    traj = {t["trajectory_id"]: t for t in _rows(root, "trajectories")}
    sft = pq.read_table(tmp_path / "sft" / "train-00000-of-00001.parquet").to_pylist()
    assert len(sft) == len(traj)
    for row in sft:
        assert [m["loss"] for m in row["messages"]] == [m["loss"] for m in traj[row["trajectory_id"]]["messages"]]
    tok = load_tokenizer(str(MODELS_DIR / "SmolLM2-135M-Instruct"))
    rows = pq.read_table(tmp_path / "tok" / "train-00000-of-00001.parquet").to_pylist()
    for row in rows:      # on the real rows: -100 on every token of a loss-false message, ids on loss-true ones
        assert check_labels(traj[row["trajectory_id"]]["messages"], tok)["labels"] == row["labels"]
    meta = json.loads((tmp_path / "tok" / "export_metadata.json").read_text())
    assert meta["tokenizer"] == "embedded" and len(meta["chat_template_sha256"]) == 64
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "tok" / "*.parquet"), split="train")
    assert {"input_ids", "labels", "completion_mask"} <= set(loaded.column_names)
    loss = _trl_two_steps(tmp_path / "tok", tmp_path / "trl-tok")
    assert math.isfinite(loss) and loss > 0
    loss = _trl_two_steps(tmp_path / "sft", tmp_path / "trl-sft")          # `messages` (loss flags ignored)
    assert math.isfinite(loss) and loss > 0


def test_twx_coin_on_the_real_model(tmp_path):
    root = tmp_path / "data"
    errata("build", "agent_demo", "--set", "env.kind=twx", "--set",
           "env.config={game: coin, game_params: 'numLocations=2'}", "--set", "tasks.count=2",
           "--set", "rollout.env_pool=1", "--no-prefect", *SMALL, env=_env(root))
    traj = _rows(root, "trajectories")
    assert len([t for t in traj if t["gold"] and t["success"]]) == 2
    policy = [t for t in traj if not t["gold"]]
    assert len(policy) + len(_rows(root, "errors")) == 2 and policy
    assert all(t["env"] == "twx" and t["task_id"].startswith("twx:coin:") for t in traj)


def test_own_env_by_class_path_whose_jvm_is_killed_mid_episode(tmp_path):
    root = tmp_path / "data"
    p = errata("build", "agent_demo", "--set", "env.kind=python", "--set", "env.class=tests.agent_envs:KillingTwxEnv",
               "--set", "env.config={kill_seed: 1, game: coin, game_params: 'numLocations=2'}",
               "--set", "tasks.count=3", "--set", "rollout.gold=false", "--set", "rollout.env_pool=1",
               "--no-prefect", *SMALL, env=_env(root))
    assert "published agent_demo@1" in p.stdout
    traj, errors = _rows(root, "trajectories"), _rows(root, "errors")
    assert sorted(t["seed"] for t in traj) == [0, 2]
    (e,) = errors
    assert e["reason"] == "twx_jvm_died" and e["stage"] == "rollout"
    assert json.loads(e["raw_input"])["task"]["seed"] == 1
    assert _manifest(root)["stages"]["rollout"]["errors"] == 1
