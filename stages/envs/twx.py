"""twx: TextWorldExpress games (cookingworld, coin, twc, ...) behind the Env interface.

    env = TwxEnv(game="coin", game_params="numLocations=5,includeDoors=1")
    env.setup()                        # starts the JVM (once per env object) and checks game_params
    task = env.tasks("train", 1)[0]    # twx:coin:numLocations=5,includeDoors=1:train:0
    obs, info = env.reset(task)        # the task description, a blank line, then the first observation
    env.step("take coin")

TWX draws each game from a seed; seeds are split into folds (train 0-999, dev 10000-10999, test 20000-20999 in
textworld-express 1.1.0), so a task is (game, game_params, fold, seed). The JVM is a py4j child process started
by `setup` and reused by every reset. Every call into it runs on one worker thread with a timeout; a call that
hangs or a JVM that dies raises EnvFailure (the JVM is killed), and the next `reset` starts a new one.
TWX has no state snapshot (its own `clone` replays the actions), so `can_snapshot` is False: callers replay.
Reward is the change in TWX's score; done when TWX reports success or failure (or the score reaches 1).
Actions are read with spaces collapsed, and up to case and a final period when that names exactly one valid
action ("Take coin." -> "take coin"). An action that is not among the last observation's valid actions is
still sent (TWX answers it, usually "Unknown action ...") and is marked info["invalid"].
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import random
import shutil
from importlib import metadata
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import ConfigError
from stages.envs.base import Env, EnvFailure, EnvTask

# py4j logs a traceback for every call into a dead JVM; those become EnvFailure here, so keep them quiet.
logging.getLogger("py4j").setLevel(logging.CRITICAL)

GAMES = ("cookingworld", "coin", "twc", "mapreader", "arithmetic", "sorting", "simonsays", "peckingorder")
# textworld-express 1.1.0's seed folds (PythonInterface.getSeedsTrain/Dev/Test; a test checks them against it)
FOLD_SEEDS = {"train": range(0, 1000), "dev": range(10000, 11000), "test": range(20000, 21000)}

INSTRUCTION = """You are in a text game. Each observation describes what you see. Act with short commands such \
as "look around", "inventory", "move north", "open fridge", "take coin" or "put shirt in wardrobe"; the game \
tells you what happened. Reach the goal stated in the task description."""


class TwxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    game: Literal[GAMES] = Field("coin", description="TextWorldExpress game")
    game_params: str = Field("", description="TWX gameParams, e.g. 'numLocations=5,includeDoors=1' (sets "
                                             "difficulty; '' = the game's defaults)")
    step_timeout_s: float = Field(10.0, gt=0, description="longest a JVM call (reset, step) may take before the "
                                                          "JVM is killed and the episode fails")
    start_timeout_s: float = Field(60.0, gt=0, description="longest the JVM may take to start")
    java: str = Field("java", description="java executable")
    jvm_options: list[str] = Field(default_factory=list, description="extra JVM options, e.g. ['-Xmx512m']")


class _Jvm:
    """One TWX JVM: a py4j gateway to a child java process, called from one worker thread with a timeout."""

    def __init__(self, cfg: TwxConfig):
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
        from textworld_express.constants import BASEPATH, JAR_PATH

        self.cfg = cfg
        self.pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="twx-jvm")
        self.proc = None
        self.gateway = None

        def start():
            port, proc = launch_gateway(classpath=JAR_PATH, die_on_exit=True, cwd=BASEPATH, return_proc=True,
                                        java_path=cfg.java, javaopts=list(cfg.jvm_options))
            self.proc = proc
            self.gateway = JavaGateway(gateway_parameters=GatewayParameters(auto_field=True, port=port),
                                       java_process=proc)
            self.server = self.gateway.jvm.textworldexpress.runtime.PythonInterface()

        self._run(start, cfg.start_timeout_s, "twx_start")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def call(self, method: str, *args: Any) -> Any:
        if not self.alive:
            raise EnvFailure("twx_jvm_died", "the JVM is not running")
        return self._run(lambda: getattr(self.server, method)(*args), self.cfg.step_timeout_s, "twx_jvm_died")

    def _run(self, fn, timeout: float, reason: str) -> Any:
        from py4j.protocol import Py4JError
        fut = self.pool.submit(fn)
        try:
            return fut.result(timeout=timeout)
        except cf.TimeoutError:
            self.kill()
            raise EnvFailure("twx_timeout", f"no answer from the JVM in {timeout:g} s") from None
        except FileNotFoundError as e:
            self.kill()
            raise EnvFailure("twx_start", f"cannot run java ({e})") from None
        except (Py4JError, OSError, EOFError) as e:
            self.kill()
            raise EnvFailure(reason, f"{type(e).__name__}: {str(e)[:300]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except Exception:
                pass

    def close(self) -> None:
        if self.gateway is not None and self.alive:
            try:
                self.gateway.shutdown()
            except Exception:
                pass
        self.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)


class TwxEnv(Env):
    name = "twx"
    can_snapshot = False

    def __init__(self, **config: Any):
        self.config = TwxConfig.model_validate(config)
        self.jvm: Optional[_Jvm] = None
        self.loaded: Optional[tuple[str, str]] = None
        self._valid: list[str] = []
        self._score = 0.0
        self.done = False
        self._success = False
        self.started = False

    # --- JVM ---------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Start the JVM if it is not running, and load the configured game (ConfigError for bad game_params)."""
        if self.jvm is not None and self.jvm.alive:
            return
        if self.jvm is not None:
            self.jvm.close()
        if shutil.which(self.config.java) is None:
            raise EnvFailure("twx_start", f"no java executable {self.config.java!r} on PATH (TWX needs Java 11+)")
        self.jvm, self.loaded = _Jvm(self.config), None
        try:
            self._load(self.config.game, self.config.game_params)
        except ConfigError:
            self.close()
            raise

    def _load(self, game: str, params: str) -> None:
        if self.loaded != (game, params):
            msg = self.jvm.call("load", game, params)
            if msg:
                raise ConfigError(f"env.config.game_params: {msg.strip()}")
            self.loaded = (game, params)

    def close(self) -> None:
        if self.jvm is not None:
            self.jvm.close()
            self.jvm = None

    # --- tasks --------------------------------------------------------------------------------------------------
    def tasks(self, split: str, count: int, seed: int = 0) -> list[EnvTask]:
        """`count` games of the fold `split`: its first `count` seeds for seed 0, else `count` seeds drawn by
        `seed`. Needs no JVM."""
        if split not in FOLD_SEEDS:
            raise ConfigError(f"split: twx has splits {', '.join(FOLD_SEEDS)}, not {split!r}")
        seeds = FOLD_SEEDS[split]
        if count > len(seeds):
            raise ConfigError(f"count: the {split} fold has {len(seeds)} games, asked for {count}")
        picked = list(seeds[:count]) if seed == 0 else random.Random(seed).sample(seeds, count)
        c = self.config
        key = c.game_params.replace(" ", "") or "default"
        return [EnvTask(task_id=f"twx:{c.game}:{key}:{split}:{s}", seed=s, split=split,
                        config={"game": c.game, "game_params": c.game_params, "fold": split},
                        instruction=INSTRUCTION) for s in picked]

    # --- episode ------------------------------------------------------------------------------------------------
    def _new_game(self, task: EnvTask, gold: bool) -> dict[str, Any]:
        self.setup()
        cfg = task.config
        self._load(cfg.get("game", self.config.game), cfg.get("game_params", self.config.game_params))
        fold = cfg.get("fold", task.split)
        if fold not in FOLD_SEEDS:
            raise ConfigError(f"task {task.task_id}: fold must be one of {', '.join(FOLD_SEEDS)}, not {fold!r}")
        return json.loads(self.jvm.call("generateNewGameJSON", int(task.seed), fold, gold))

    def reset(self, task: EnvTask) -> tuple[str, dict[str, Any]]:
        r = self._new_game(task, gold=False)
        desc = self.jvm.call("getTaskDescription")
        self._valid, self._score = sorted(r["validActions"]), float(r["score"])
        self.done, self._success, self.started = False, False, True
        obs = f"{desc.strip()}\n\n{r['observation'].strip()}"
        return obs, {"task_description": desc, "score": self._score}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if not self.started:
            raise RuntimeError("step before reset")
        if self.done:
            return "The task is already done.", 0.0, True, {"invalid": True, "success": self._success}
        a = " ".join(action.split()) if isinstance(action, str) else ""
        if not a:
            return "Unknown action: (empty).", 0.0, False, {"invalid": True}
        a = self._canonical(a)
        invalid = a not in self._valid
        r = json.loads(self.jvm.call("stepJSON", a))
        score = float(r["score"])
        reward, self._score = score - self._score, score
        self._valid = sorted(r["validActions"])
        self.done = bool(r["tasksuccess"] or r["taskfailure"] or score >= 1.0)
        info: dict[str, Any] = {"score": score}
        if invalid:
            info["invalid"] = True
        if self.done:
            self._success = bool(r["tasksuccess"] or score >= 1.0)
            info["success"] = self._success
        return r["observation"].strip(), reward, self.done, info

    def _canonical(self, a: str) -> str:
        """TWX matches actions exactly: "Take coin." becomes "take coin" when exactly one valid action is the
        same up to case and a final period."""
        if a in self._valid:
            return a
        key = a.rstrip(". ").lower()
        hits = [v for v in self._valid if v.lower() == key]
        return hits[0] if len(hits) == 1 else a

    def valid_actions(self) -> Optional[list[str]]:
        return list(self._valid) if self.started else None

    def gold_plan(self, task: EnvTask) -> list[tuple[str, str]]:
        """TWX's own gold action sequence for the task (resets the env); thoughts are short templates.
        The games are deterministic, but TWX's gold path for `coin` is not (measured on 1.1.0: the same task gave
        plans of different lengths across calls, with detours); cookingworld's and twc's are the same every call.
        A gold trajectory records its actions, so replaying it is exact either way."""
        self._new_game(task, gold=True)
        actions = list(self.jvm.call("getGoldActionSequence"))
        self.started = False            # the game was regenerated: a reset must come before any step
        if actions and actions[0] == "look around":
            actions = actions[1:]        # the reset already shows it
        return [(f"Next I {a}." if i + 1 < len(actions) else f"Finally I {a}, which should complete the task.", a)
                for i, a in enumerate(actions)]

    def describe(self) -> dict[str, Any]:
        try:
            version = metadata.version("textworld-express")
        except metadata.PackageNotFoundError:
            version = None
        return {"env": self.name, "game": self.config.game, "game_params": self.config.game_params,
                "textworld_express": version}
