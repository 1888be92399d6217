"""Methods: a method is a recipe kind, an ordered list of stages over registered tables.

`method: sample_verify` in a recipe selects the stages here; the recipe's YAML sets their options (one section per
stage, typed by the stage's own options class). A method also names the engine roles its stages use, the tables a
task source feeds it, and which registered exports serve `errata export --format sft|dpo` for its versions.
Adding a method is adding a `register_method(Method(...))`; the runner, storage and exports have no special case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from pydantic import Field, create_model

from pipelines.config import RecipeConfig
from schemas.errors import ConfigError
from stages.base import Stage, StageContext


@dataclass(frozen=True)
class StageSpec:
    name: str                 # the step's name: config section, stats key, checkpoint directory
    stage: type[Stage]


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    stages: tuple[StageSpec, ...]
    roles: tuple[str, ...] = ("student",)
    inputs: tuple[str, ...] = ("problems",)          # tables a task source provides
    exports: dict[str, str] = field(default_factory=dict)   # --format alias -> registered export name
    # manifest `stages` -> named figures the build summary prints (e.g. LEMMA's yield per stage); None: nothing
    summary: Optional[Callable[[dict], dict]] = None

    def recipe_model(self) -> type[RecipeConfig]:
        return _recipe_model(self)

    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def make_stages(self, config: RecipeConfig, run_id: str = "") -> list[Stage]:
        """Stage objects for this recipe (cheap: no engine or worker starts)."""
        ctx = StageContext(run_id=run_id, method=config.method, engines=dict(config.engines))
        return [s.stage(config.stage_config(s.name), name=s.name, context=ctx) for s in self.stages]


_MODELS: dict[str, type[RecipeConfig]] = {}


def _recipe_model(method: Method) -> type[RecipeConfig]:
    if method.name in _MODELS:
        return _MODELS[method.name]
    sections = {s.name: (s.stage.config_class,
                         Field(default_factory=s.stage.config_class,
                               description=f"stage '{s.name}' ({s.stage.kind}): {s.stage.description}"))
                for s in method.stages}
    model = create_model(f"Recipe_{method.name}", __base__=RecipeConfig, **sections)
    model.roles = tuple(method.roles)
    model.stage_sections = tuple(sections)
    _MODELS[method.name] = model
    return model


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    names = method.stage_names()
    if len(set(names)) != len(names):
        raise ConfigError(f"method '{method.name}': stage names must be unique ({names})")
    clash = set(names) & set(RecipeConfig.model_fields)
    if clash:
        raise ConfigError(f"method '{method.name}': stage names {sorted(clash)} clash with recipe sections")
    _METHODS[method.name] = method
    _MODELS.pop(method.name, None)
    return method


def get_method(name: str) -> Method:
    _load_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}' (known: {', '.join(sorted(_METHODS))})") from None


def methods() -> dict[str, Method]:
    _load_builtin()
    return dict(_METHODS)


def method_of(config: RecipeConfig) -> Method:
    return get_method(config.method)


_LOADED = False


def _load_builtin() -> None:
    """Register the built-in methods (their stage modules are imported only when a method is needed)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from stages.filter import AttemptFilter, DuplicateProblems
    from stages.generate import GenerateStage
    from stages.self_check import RetryStage, SelfCheckStage
    from stages.verify import VerifyStage
    register_method(Method(
        "sample_verify", "sample n answers per problem, verify them against the reference, filter",
        (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("filter", AttemptFilter),
         StageSpec("dedup", DuplicateProblems)),
        roles=("student",), exports={"sft": "sft_attempts", "dpo": "dpo_attempts"}))
    register_method(Method(
        "self_correct", "sample, verify, let the model review its own attempts, retry the wrong ones with that "
                        "review, verify again, filter",
        (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage),
         StageSpec("self_check", SelfCheckStage), StageSpec("retry", RetryStage),
         StageSpec("verify_retry", VerifyStage), StageSpec("filter", AttemptFilter),
         StageSpec("dedup", DuplicateProblems)),
        roles=("student",), exports={"sft": "sft_attempts", "dpo": "dpo_attempts"}))
    _load_lemma()
    _load_agents()


def _load_lemma() -> None:
    import pipelines.lemma_exports  # noqa: F401  (registers the revision exports)
    from stages.filter import AttemptFilter
    from stages.generate import GenerateStage
    from stages.lemma.injecting import InjectionFilter, InjectStage, VerifyInjections
    from stages.lemma.judging import JudgeInjectionsStage, JudgeStage
    from stages.lemma.revising import RevisionFilter, ReviseStage, VerifyRevisions
    from stages.lemma.smoothing import SmoothStage, VerifySmoothed
    from stages.lemma.summary import lemma_summary
    from stages.lemma.weights import TypeWeightsStage
    from stages.verify import VerifyStage
    register_method(Method(
        "lemma", "LEMMA (arXiv 2503.17439): the student samples; a teacher locates and types the first error of "
                 "each wrong attempt, writes errors of those types (or the rules injector makes labelled ones), "
                 "and revises them (fix & continue, fresh & restart); every revision verified",
        (StageSpec("generate", GenerateStage), StageSpec("verify", VerifyStage), StageSpec("filter", AttemptFilter),
         StageSpec("judge", JudgeStage), StageSpec("type_weights", TypeWeightsStage),
         StageSpec("injections", InjectStage), StageSpec("verify_injections", VerifyInjections),
         StageSpec("filter_injections", InjectionFilter), StageSpec("judge_injections", JudgeInjectionsStage),
         StageSpec("revise", ReviseStage), StageSpec("verify_revisions", VerifyRevisions),
         StageSpec("filter_revisions", RevisionFilter), StageSpec("smooth", SmoothStage),
         StageSpec("verify_smoothed", VerifySmoothed), StageSpec("filter_smoothed", RevisionFilter)),
        roles=("student", "teacher"), exports={"sft": "sft_revisions", "sft-tokenized": "sft_tokenized_revisions",
                                                "dpo": "dpo_revisions"},
        summary=lemma_summary))


def _load_agents() -> None:
    import pipelines.agent_exports  # noqa: F401  (registers the trajectory exports)
    from stages.rollout import RolloutStage
    register_method(Method(
        "agent_rollout", "a policy model acts in an environment's tasks in ReAct turns (Agent-R's conversation), "
                         "n episodes per task, plus the env's gold path on request",
        (StageSpec("rollout", RolloutStage),),
        roles=("policy",), exports={"sft": "sft_trajectories", "sft-tokenized": "sft_tokenized_trajectories"}))
    import pipelines.agent_r_exports  # noqa: F401  (registers the Agent-R exports)
    from stages.agent_r import MCTSStage, PairsStage
    from stages.agent_r_revision import JudgeStage, SpliceStage
    register_method(Method(
        "agent_r", "Agent-R: MCTS per env task with the policy, (good, bad) leaf pairs, the policy judges the bad "
                   "path's first error, spliced revision trajectories (and good trajectories)",
        (StageSpec("mcts", MCTSStage), StageSpec("pairs", PairsStage), StageSpec("judge", JudgeStage),
         StageSpec("splice", SpliceStage)),
        roles=("policy",), exports={"sft": "sft_agent_r", "sft-tokenized": "sft_tokenized_agent_r",
                                    "dpo": "dpo_agent_r"}))


def stage_of(config: RecipeConfig, name: str, run_id: str = "") -> Optional[Stage]:
    for s in method_of(config).make_stages(config, run_id):
        if s.name == name:
            return s
    return None
