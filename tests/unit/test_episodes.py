"""stages.agents.episodes: episodes with scripted async policies (no model), concurrency, failures, env pools,
gold trajectories."""
import asyncio
import re
import threading

from stages.agents.episodes import EnvPool, gold_trajectory, run_episode, run_episodes
from stages.agents.react import format_turn
from stages.envs.base import INVALID_ACTION, Env, EnvFailure, EnvTask, replay
from stages.envs.craft import CraftEnv

GEN = {"generate": {"seed": 11, "depth": 3}}


def craft_tasks(n, split="train"):
    return CraftEnv(**GEN).tasks(split, n)


class GoldPolicy:
    """Plays the planner's actions for whichever goal the first observation names (one episode per goal at a
    time), alternating plain and markdown formats."""

    def __init__(self, tasks, junk_first=False, delay=0.0, gather=0):
        env = CraftEnv(**GEN)
        self.plans = {t.config["goal"]: [a for _, a in env.gold_plan(t)] for t in tasks}
        self.junk_first, self.delay = junk_first, delay
        self.calls, self.in_flight, self.max_in_flight, self.seen = 0, 0, 0, []
        self.progress, self.junked = {}, set()
        self.gather, self.gathered = gather, asyncio.Event()   # first `gather` calls wait for one another

    async def __call__(self, messages):
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.seen.append(messages)
        try:
            if self.calls <= self.gather:
                if self.in_flight == self.gather:
                    self.gathered.set()
                try:            # a safety net, not a timing: only sequential episodes would ever wait this long
                    await asyncio.wait_for(self.gathered.wait(), 20)
                except asyncio.TimeoutError:
                    pass
            if self.delay:
                await asyncio.sleep(self.delay)
            goal = re.search(r"Goal: craft (.+)\.$", messages[2]["content"]).group(1)
            if self.junk_first and goal not in self.junked:
                self.junked.add(goal)
                return "hmm, let me think about this"
            plan, done = self.plans[goal], self.progress.get(goal, 0)
            self.progress[goal] = done + 1
            action = plan[min(done, len(plan) - 1)]
            return ["Thought: step\nAction: " + action, f"**Action:** `{action}`\nObservation: made up"][done % 2]
        finally:
            self.in_flight -= 1


def run(coro):
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------ one episode

def test_episode_solves_and_has_the_agent_r_shape():
    task = craft_tasks(1)[0]
    env, policy = CraftEnv(**GEN), GoldPolicy([task])
    traj = run(run_episode(env, task, policy, max_steps=50))
    n = len(policy.plans[task.config["goal"]])
    assert traj["success"] and traj["final_reward"] == 1.0 and traj["error"] is None and traj["n_steps"] == n
    assert (traj["task_id"], traj["env"], traj["seed"], traj["gold"]) == (task.task_id, "craft", task.seed, False)
    msgs = traj["messages"]
    assert len(msgs) == 3 + 2 * n and msgs[1]["content"] == "OK"
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] + ["assistant", "user"] * n
    assert [m["loss"] for m in msgs] == [False, False, False] + [True, False] * n
    steps = traj["steps"]
    assert [s["idx"] for s in steps] == list(range(1, n + 1)) and steps[-1]["done"] and steps[-1]["reward"] == 1.0
    assert set(steps[0]) == {"idx", "thought", "action", "observation", "reward", "done", "raw_text", "parse_ok",
                             "invalid"}
    assert all(s["raw_text"] == m["content"] for s, m in zip(steps, msgs[3::2]))       # raw text kept
    assert all(s["observation"] == m["content"] for s, m in zip(steps, msgs[4::2]))
    assert steps[1]["action"] == policy.plans[task.config["goal"]][1]                   # markdown parsed


def test_unparseable_text_becomes_an_invalid_step_not_a_guess():
    task = craft_tasks(1)[0]
    traj = run(run_episode(CraftEnv(**GEN), task, GoldPolicy([task], junk_first=True), max_steps=50))
    first = traj["steps"][0]
    assert (first["parse_ok"], first["action"], first["thought"], first["reward"]) == (
        False, None, "hmm, let me think about this", 0.0)
    assert first["observation"].startswith("Could not execute") and INVALID_ACTION in first["observation"]
    assert first["raw_text"] == "hmm, let me think about this"
    assert traj["success"]                                   # and the episode goes on


def test_max_steps_ends_an_unsolved_episode():
    async def idle(messages):
        return "Thought: look\nAction: inventory"
    traj = run(run_episode(CraftEnv(**GEN), craft_tasks(1)[0], idle, max_steps=4))
    assert (traj["n_steps"], traj["success"], traj["final_reward"], traj["error"]) == (4, False, 0.0, None)


def test_replaying_a_trajectory_reproduces_it():
    task = craft_tasks(1)[0]
    traj = run(run_episode(CraftEnv(**GEN), task, GoldPolicy([task], junk_first=True), max_steps=50))
    env = CraftEnv(**GEN)
    actions = [s["action"] if s["parse_ok"] else INVALID_ACTION for s in traj["steps"]]
    for k in range(len(actions)):
        obs, *_ = replay(env, task, actions[:k + 1])
        assert obs == traj["steps"][k]["observation"]


# ------------------------------------------------------------------------------------------ context budget

def words(msgs):
    return sum(len(m["content"].split()) for m in msgs)


def test_context_is_trimmed_for_the_policy_but_kept_whole_in_the_trajectory():
    task = craft_tasks(1)[0]
    policy = GoldPolicy([task])
    traj_full = run(run_episode(CraftEnv(**GEN), task, GoldPolicy([task]), max_steps=50))
    opening = words(traj_full["messages"][:3])
    budget = opening + 30
    traj = run(run_episode(CraftEnv(**GEN), task, policy, max_steps=50, count_tokens=words, budget=budget))
    assert traj["messages"] == traj_full["messages"] and traj["dropped_pairs"] > 0
    for i, ctx in enumerate(policy.seen):
        assert words(ctx) <= budget and ctx[:3] == traj["messages"][:3]
        assert ctx[-1] == traj["messages"][2 + 2 * i]           # always the latest observation
    assert max(len(c) for c in policy.seen) < len(traj["messages"])


def test_context_that_cannot_fit_is_an_error():
    task = craft_tasks(1)[0]
    traj = run(run_episode(CraftEnv(**GEN), task, GoldPolicy([task]), max_steps=5, count_tokens=words, budget=5))
    assert traj["error"].startswith("context_too_long") and traj["n_steps"] == 0


# ------------------------------------------------------------------------------------------ failures

class FlakyEnv(Env):
    """Fails with EnvFailure at step `fail_at`, or hangs there until released."""
    name = "flaky"

    def __init__(self, fail_at=2, hang: threading.Event = None):
        self.fail_at, self.hang, self.k = fail_at, hang, 0
        self.setups = 0

    def setup(self):
        self.setups += 1

    def reset(self, task):
        self.k = 0
        return "start", {}

    def step(self, action):
        self.k += 1
        if self.k == self.fail_at:
            if self.hang is not None:
                self.hang.wait(30)
            else:
                raise EnvFailure("flaky_crash", "the env died")
        done = self.k >= 3
        return f"obs {self.k}", float(done), done, ({"success": True} if done else {})


async def go(messages):
    return "Thought: go\nAction: go"


def test_env_failure_mid_episode_is_an_error_not_a_raise():
    traj = run(run_episode(FlakyEnv(fail_at=2), EnvTask("f:0"), go, max_steps=10))
    assert traj["error"] == "flaky_crash: the env died" and traj["n_steps"] == 1 and not traj["success"]


def test_policy_failure_is_an_error_not_a_raise():
    async def broken(messages):
        raise RuntimeError("engine down")
    traj = run(run_episode(FlakyEnv(), EnvTask("f:0"), broken, max_steps=10))
    assert traj["error"] == "policy: RuntimeError: engine down" and traj["n_steps"] == 0


def test_reset_failure_is_an_error():
    class BadReset(FlakyEnv):
        def reset(self, task):
            raise ValueError("no such task")
    traj = run(run_episode(BadReset(), EnvTask("f:0"), go, max_steps=10))
    assert traj["error"] == "env_reset: ValueError: no such task"


def test_hanging_env_times_out_and_the_pool_replaces_it():
    release = threading.Event()
    made = []

    def factory():
        made.append(FlakyEnv(fail_at=2 if not made else 99, hang=release))
        return made[-1]

    async def main():
        pool = EnvPool(factory, size=1)        # f:1 waits for the only env, then gets a fresh one
        trajs = await asyncio.wait_for(run_episodes([EnvTask("f:0"), EnvTask("f:1")], go, pool=pool, max_steps=10,
                                                    concurrency=2, step_timeout_s=0.5), 20)
        release.set()
        await pool.close()
        return trajs

    hung, ok = run(main())
    assert hung["error"].startswith("env_timeout") and ok["success"] and len(made) == 2


def test_batch_goes_on_when_some_episodes_fail():
    tasks = [EnvTask(f"f:{i}") for i in range(5)]
    flaky = iter([FlakyEnv(fail_at=2), FlakyEnv(fail_at=99), FlakyEnv(fail_at=99)])
    trajs = run(run_episodes(tasks, go, env_factory=lambda: next(flaky), concurrency=3, max_steps=10))
    assert [t["task_id"] for t in trajs] == [t.task_id for t in tasks]
    failed = [t for t in trajs if t["error"] is not None]
    assert all(t["error"] == "flaky_crash: the env died" and t["n_steps"] == 1 for t in failed)
    assert all(t["success"] and t["n_steps"] == 3 for t in trajs if t["error"] is None)
    assert 1 <= len(failed) < len(trajs)


# ------------------------------------------------------------------------------------------ concurrency

def test_episodes_run_concurrently():
    """The first 8 policy calls wait until all 8 are in flight: that only happens if 8 episodes run at once
    (run one by one, the first call would wait in vain and max_in_flight would stay 1)."""
    tasks = craft_tasks(8)
    policy = GoldPolicy(tasks, delay=0.001, gather=8)
    trajs = run(run_episodes(tasks, policy, env_factory=lambda: CraftEnv(**GEN), concurrency=8, max_steps=50))
    assert all(t["success"] for t in trajs) and [t["task_id"] for t in trajs] == [t.task_id for t in tasks]
    assert policy.max_in_flight == 8 and policy.gathered.is_set()
    limited = GoldPolicy(tasks, delay=0.001, gather=3)
    trajs = run(run_episodes(tasks, limited, env_factory=lambda: CraftEnv(**GEN), concurrency=3, max_steps=50))
    assert limited.max_in_flight == 3 and all(t["success"] for t in trajs)          # 3 at once, never more


def test_a_blocking_env_step_does_not_block_other_episodes_policy_calls():
    """Episode A's env step blocks its thread until episode B's policy is called. If env steps ran on the event
    loop, B's policy could never run and A's wait would time out."""
    b_asked = threading.Event()
    result = {}

    class Blocking(FlakyEnv):
        def reset(self, task):
            self.task = task
            return super().reset(task)

        def step(self, action):
            if self.task.task_id == "A" and self.k == 0:
                result["released"] = b_asked.wait(20)
            return super().step(action)

    async def main():
        async def p(messages):
            if asyncio.current_task().get_name() == "B":
                b_asked.set()
            return "Thought: go\nAction: go"

        pool = EnvPool(lambda: Blocking(fail_at=99), size=2)
        env_a, env_b = await pool.acquire(), await pool.acquire()
        ta = asyncio.create_task(run_episode(env_a, EnvTask("A"), p, 5, executor=pool.executor_for(env_a)), name="A")
        await asyncio.sleep(0.05)                             # A is now inside its blocking step
        tb = asyncio.create_task(run_episode(env_b, EnvTask("B"), p, 5, executor=pool.executor_for(env_b)), name="B")
        out = await asyncio.gather(ta, tb)
        await pool.close()
        return out

    a, b = run(main())
    assert result["released"] is True and a["success"] and b["success"]


def test_env_pool_makes_k_envs_and_sets_each_up_once():
    made = []

    def factory():
        made.append(FlakyEnv(fail_at=99))
        return made[-1]

    async def main():
        async with EnvPool(factory, size=2) as pool:
            return await run_episodes([EnvTask(f"f:{i}") for i in range(6)], go, pool=pool, concurrency=6,
                                      max_steps=10)
    trajs = run(main())
    assert all(t["success"] for t in trajs) and len(made) == 2 and [e.setups for e in made] == [1, 1]


def test_same_policy_same_trajectories():
    tasks = craft_tasks(4)
    a = run(run_episodes(tasks, GoldPolicy(tasks, junk_first=True), env_factory=lambda: CraftEnv(**GEN),
                         concurrency=4, max_steps=50))
    b = run(run_episodes(tasks, GoldPolicy(tasks, junk_first=True), env_factory=lambda: CraftEnv(**GEN),
                         concurrency=2, max_steps=50))
    assert a == b


# ------------------------------------------------------------------------------------------ gold

def test_gold_trajectory_from_the_planner():
    task = craft_tasks(1, "test")[0]
    env = CraftEnv(**GEN)
    traj = gold_trajectory(env, task)
    plan = env.gold_plan(task)
    assert traj["gold"] is True and traj["success"] and traj["error"] is None and traj["n_steps"] == len(plan)
    assert [m["content"] for m in traj["messages"][3::2]] == [format_turn(t, a) for t, a in plan]
    assert all(m["loss"] for m in traj["messages"][3::2]) and not any(m["loss"] for m in traj["messages"][4::2])
    assert [s["action"] for s in traj["steps"]] == [a for _, a in plan]


def test_gold_trajectory_errors():
    traj = gold_trajectory(FlakyEnv(fail_at=99), EnvTask("f:0"))
    assert traj["error"].startswith("gold: NotImplementedError") and traj["gold"]
    task = craft_tasks(1)[0]
    short = gold_trajectory(CraftEnv(**GEN), task, max_steps=1)
    assert short["error"].startswith("gold_failed")


def test_env_setup_failure_is_an_episode_error():
    class NoJava(FlakyEnv):
        def setup(self):
            raise EnvFailure("twx_start", "no java")
    trajs = run(run_episodes([EnvTask("a"), EnvTask("b"), EnvTask("c")], go, env_factory=NoJava, concurrency=2,
                             max_steps=3))
    assert [t["error"] for t in trajs] == ["twx_start: no java"] * 3
    assert [t["task_id"] for t in trajs] == ["a", "b", "c"]
