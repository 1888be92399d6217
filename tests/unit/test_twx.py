"""stages.envs.twx: TextWorldExpress games through a real JVM (skipped without java or textworld-express)."""
import asyncio
import os
import shutil
import signal
import time

import pytest

pytest.importorskip("textworld_express", reason="textworld-express not installed")
if shutil.which("java") is None:
    pytest.skip("java not found on PATH: TextWorldExpress needs a JVM", allow_module_level=True)

from schemas.errors import ConfigError  # noqa: E402
from stages.agents.episodes import EnvPool, gold_trajectory, run_episodes  # noqa: E402
from stages.envs.base import INVALID_ACTION, EnvFailure, replay  # noqa: E402
from stages.envs.twx import FOLD_SEEDS, TwxEnv  # noqa: E402

GAMES = {
    "coin": "numLocations=4,includeDoors=1",
    "cookingworld": "numLocations=3,numIngredients=2,numDistractorItems=2,includeDoors=0",
    "twc": "numLocations=2,numItemsToPutAway=2",
}


@pytest.fixture(scope="module")
def envs():
    made = {g: TwxEnv(game=g, game_params=p, step_timeout_s=20) for g, p in GAMES.items()}
    yield made
    for e in made.values():
        e.close()


def test_fold_seeds_match_textworld_express(envs):
    env = envs["coin"]
    env.setup()
    for fold, method in (("train", "getSeedsTrain"), ("dev", "getSeedsDev"), ("test", "getSeedsTest")):
        assert sorted(env.jvm.call(method)) == list(FOLD_SEEDS[fold])


@pytest.mark.parametrize("game", sorted(GAMES))
def test_gold_path_solves_tasks(envs, game):
    env = envs[game]
    for split in ("train", "test"):
        for task in env.tasks(split, 3, seed=1):
            traj = gold_trajectory(env, task)
            assert traj["success"] and traj["error"] is None and traj["gold"], (task.task_id, traj["steps"][-1:])
            assert traj["final_reward"] >= 1.0 - 1e-9
            assert traj["messages"][2]["content"].startswith(env.jvm.call("getTaskDescription").strip())


@pytest.mark.parametrize("game", ["cookingworld", "twc"])      # coin's gold path is a random walk in TWX 1.1.0
def test_gold_plan_is_the_same_every_call(envs, game):
    env = envs[game]
    for task in env.tasks("dev", 3):
        assert env.gold_plan(task) == env.gold_plan(task)


def test_same_task_same_game_and_replay(envs):
    env = envs["cookingworld"]
    task = env.tasks("dev", 1, seed=5)[0]
    actions = [a for _, a in env.gold_plan(task)][:4] + ["dance", "inventory"]
    obs0, _ = env.reset(task)
    first = [env.step(a) for a in actions]
    valid = env.valid_actions()
    assert env.reset(task)[0] == obs0
    assert [env.step(a) for a in actions] == first and env.valid_actions() == valid == sorted(valid)
    assert replay(env, task, actions[:3])[0] == first[2][0]
    a, b = env.tasks("dev", 2, seed=0)
    assert a.seed != b.seed and a.task_id != b.task_id


def test_invalid_actions_are_answered_not_raised(envs):
    env = envs["coin"]
    env.reset(env.tasks("train", 1)[0])
    for a in ["dance wildly", INVALID_ACTION, "", "   ", "take the moon\nand stars", "ünïcödé"]:
        obs, reward, done, info = env.step(a)
        assert info.get("invalid") is True and reward == 0 and not done and obs, a
    ok = env.valid_actions()[0]
    assert "invalid" not in env.step(ok)[3]


def test_actions_are_read_up_to_case_spaces_and_a_final_period(envs):
    env = envs["twc"]
    task = env.tasks("train", 1)[0]
    env.reset(task)
    take = next(a for a in env.valid_actions() if a.startswith("take "))
    messy = "  " + take.upper().replace(" ", "   ") + ". "
    obs, reward, done, info = env.step(messy)
    env.reset(task)
    assert (obs, reward, done, info) == env.step(take) and "invalid" not in info


def test_jvm_starts_once_per_env_and_is_reused(envs):
    env = envs["twc"]
    env.setup()
    pid = env.jvm.proc.pid
    for task in env.tasks("train", 4):
        env.reset(task)
        env.step("look around")
    assert env.jvm.proc.pid == pid and not env.can_snapshot
    with pytest.raises(NotImplementedError):
        env.snapshot()


def test_bad_game_params_are_a_config_error():
    env = TwxEnv(game="coin", game_params="numLocations=3,bogus=1")
    with pytest.raises(ConfigError, match=r"env\.config\.game_params: .*bogus"):
        env.setup()
    assert env.jvm is None                                 # the JVM it started is gone again


def wait_until_stopped(pid: int) -> None:
    """SIGSTOP takes effect asynchronously: wait until /proc says the process is stopped ('T')."""
    for _ in range(2000):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


def test_hung_jvm_times_out_and_the_next_reset_restarts_it():
    env = TwxEnv(game="coin", step_timeout_s=30)
    try:
        task = env.tasks("train", 1)[0]
        env.reset(task)
        env.config.step_timeout_s = 1.0                    # short, now that the JVM is warm
        old = env.jvm.proc
        os.kill(old.pid, signal.SIGSTOP)
        wait_until_stopped(old.pid)
        with pytest.raises(EnvFailure, match="twx_timeout"):
            env.step("look around")
        assert old.poll() is not None                      # killed, not left stopped
        env.config.step_timeout_s = 30                     # the new JVM starts cold
        obs, _ = env.reset(task)
        assert env.jvm.proc.pid != old.pid and "coin" in obs
    finally:
        env.close()


def test_jvm_killed_mid_episode_is_an_episode_error_and_the_next_episode_works():
    made = []

    def factory():
        made.append(TwxEnv(game="cookingworld", game_params=GAMES["cookingworld"]))
        return made[-1]

    planner = TwxEnv(game="cookingworld", game_params=GAMES["cookingworld"])
    tasks = planner.tasks("test", 2)
    plans = [[a for _, a in planner.gold_plan(t)] for t in tasks]
    planner.close()
    assert all(len(p) >= 2 for p in plans)
    episode, step_in_episode = [-1], [0]

    async def policy(messages):                            # one episode at a time, in task order
        if len(messages) == 3:
            episode[0] += 1
            step_in_episode[0] = 0
        plan = plans[episode[0]]
        action = plan[min(step_in_episode[0], len(plan) - 1)]
        step_in_episode[0] += 1
        return f"Thought: following the plan\nAction: {action}"

    def kill_after_first_step(traj, step):
        if traj["task_id"] == tasks[0].task_id and step["idx"] == 1:
            os.kill(made[0].jvm.proc.pid, signal.SIGKILL)
            made[0].jvm.proc.wait(20)                      # dead before the next step, not a moment after

    async def main():
        async with EnvPool(factory, size=1) as pool:
            return await run_episodes(tasks, policy, pool=pool, concurrency=1, max_steps=30,
                                      on_step=kill_after_first_step)

    broken, ok = asyncio.run(main())
    assert broken["error"].startswith("twx_jvm_died") and broken["n_steps"] == 1 and not broken["success"]
    assert ok["error"] is None and ok["success"] and len(made) == 1   # same env object, a new JVM
