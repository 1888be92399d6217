"""stages.envs: make_env / tasks_for for craft, twx and a user's own class (defined here, loaded by path)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import ConfigError
from stages.envs import KINDS, Env, EnvTask, make_env, tasks_for
from stages.envs.craft import CraftEnv
from stages.envs.twx import TwxEnv

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).stem                 # this module, as a bring-your-own env package would be


class CounterEnv(Env):
    """A tiny env of our own: count up to `target`; 'inc' adds `step`."""
    name = "counter"
    can_snapshot = True

    def __init__(self, target: int, step: int = 1):
        if target < 1:
            raise ValueError("target must be >= 1")
        self.target, self.stepsize, self.n = target, step, 0

    def reset(self, task):
        self.n = 0
        return f"count 0 of {self.target}", {}

    def step(self, action):
        if action.strip() != "inc":
            return "Invalid action: only 'inc'.", 0.0, False, {"invalid": True}
        self.n += self.stepsize
        done = self.n >= self.target
        return f"count {self.n}", float(done), done, ({"success": True} if done else {})

    def tasks(self, split, count, seed=0):
        return [EnvTask(task_id=f"counter:{split}:{k}", split=split, seed=seed) for k in range(count)]

    def gold_plan(self, task):
        return [("I count up.", "inc")] * -(-self.target // self.stepsize)

    def snapshot(self):
        return self.n

    def restore(self, state):
        self.n = state


class NoTasksEnv(CounterEnv):
    tasks = Env.tasks


class NotAnEnv:
    def reset(self, task):
        return "", {}

    def step(self, action):
        return "", 0.0, False, {}


class NoStepEnv(Env):
    def reset(self, task):
        return "", {}


def test_kinds():
    assert KINDS == ("craft", "twx", "python")
    assert isinstance(make_env("craft", {}), CraftEnv)
    env = make_env("twx", {"game": "cookingworld", "game_params": "numLocations=2"})
    assert isinstance(env, TwxEnv) and env.jvm is None                  # cheap: no JVM before setup
    with pytest.raises(ConfigError, match="env.kind: unknown environment kind 'gym'"):
        make_env("gym", {})


@pytest.mark.parametrize("kind, config, field", [
    ("craft", {"bogus": 1}, "env.config.bogus"),
    ("craft", {"generate": {"depth": 0}}, "env.config.generate.depth"),
    ("craft", {"distractors": "many"}, "env.config.distractors"),
    ("twx", {"game": "zork"}, "env.config.game"),
    ("twx", {"step_timeout_s": -1}, "env.config.step_timeout_s"),
])
def test_builtin_config_errors_name_the_field(kind, config, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_env(kind, config)


def test_bring_your_own_env_by_class_path():
    env = make_env("python", {"target": 3, "step": 2}, class_path=f"{HERE}:CounterEnv")
    assert type(env).__name__ == "CounterEnv" and (env.target, env.stepsize) == (3, 2)
    task = tasks_for("python", {"target": 3}, "train", 2, class_path=f"{HERE}:CounterEnv")[1]
    assert task.task_id == "counter:train:1"
    env.reset(task)
    assert env.step("jump")[3] == {"invalid": True}
    assert env.step("inc")[:3] == ("count 2", 0.0, False)
    assert env.step("inc")[:3] == ("count 4", 1.0, True)


@pytest.mark.parametrize("class_path, config, message", [
    ("no_colon_here", {}, r"env\.class: expected 'package\.module:ClassName'"),
    ("a:b:c", {}, r"env\.class: expected"),
    (":CounterEnv", {}, r"env\.class: expected"),
    ("no_such_module_xyz:Env", {}, r"env\.class: cannot import module 'no_such_module_xyz'"),
    (f"{HERE}:Missing", {}, rf"env\.class: module '{HERE}' has no 'Missing'"),
    (f"{HERE}:NotAnEnv", {}, r"env\.class: .*NotAnEnv is not an environment class"),
    (f"{HERE}:NoStepEnv", {}, r"env\.class: .*NoStepEnv does not implement step"),
    (f"{HERE}:KINDS", {}, r"env\.class: .*is not an environment class"),
    (f"{HERE}:CounterEnv", {"target": 2, "speed": 3}, r"env\.config\.speed: .*takes no option 'speed'"),
    (f"{HERE}:CounterEnv", {"step": 3}, r"env\.config\.target: required"),
    (f"{HERE}:CounterEnv", {"target": 0}, r"env\.config: .*target must be >= 1"),
    (f"{HERE}:CounterEnv", ["target"], r"env\.config: expected a mapping"),
])
def test_bring_your_own_env_errors_name_the_field(class_path, config, message):
    with pytest.raises(ConfigError, match=message):
        make_env("python", config, class_path=class_path)


def test_class_path_rules():
    with pytest.raises(ConfigError, match=r"env\.class: required for kind 'python'"):
        make_env("python", {})
    with pytest.raises(ConfigError, match=r"env\.class: only kind 'python' takes a class"):
        make_env("craft", {}, class_path=f"{HERE}:CounterEnv")


def test_tasks_for():
    craft = tasks_for("craft", {"generate": {"seed": 4}}, "test", 3, seed=0)
    assert craft == CraftEnv(generate={"seed": 4}).tasks("test", 3)
    twx = tasks_for("twx", {"game": "coin", "game_params": "numLocations=4"}, "dev", 2)
    assert [(t.task_id, t.seed, t.config["fold"]) for t in twx] == [
        ("twx:coin:numLocations=4:dev:10000", 10000, "dev"), ("twx:coin:numLocations=4:dev:10001", 10001, "dev")]
    drawn = tasks_for("twx", {"game": "twc"}, "test", 5, seed=3)
    assert drawn == tasks_for("twx", {"game": "twc"}, "test", 5, seed=3)
    assert all(20000 <= t.seed < 21000 for t in drawn) and len({t.seed for t in drawn}) == 5
    with pytest.raises(ConfigError, match="split"):
        tasks_for("twx", {}, "validation", 2)
    with pytest.raises(ConfigError, match="count"):
        tasks_for("craft", {}, "train", 0)
    with pytest.raises(ConfigError, match=r"env\.class: .*has no task list"):
        tasks_for("python", {"target": 1}, "train", 2, class_path=f"{HERE}:NoTasksEnv")


def test_importing_the_registry_is_cheap():
    code = ("import sys, stages.envs, stages.agents.episodes; "
            "print(sorted(m for m in ('py4j', 'stages.envs.craft', 'stages.envs.twx', 'ray', 'prefect') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_envs_and_agents_import_neither_ray_nor_prefect():
    for path in list((REPO / "stages" / "envs").glob("*.py")) + list((REPO / "stages" / "agents").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("ray", "prefect")], path
