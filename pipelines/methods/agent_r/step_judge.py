"""Agent-R's first-error walk: the actor judges its own bad path, step by step, and the first Bad step is where
the revision goes.

    judge = StepJudge(tree, policy, JudgeSettings())
    walk = await first_error_walk(tree, pair, judge)    # Walk: judgements, status, end node, first_error_depth

Each step of the bad path, from the divergence child (the first step that differs from the good path) to the bad
leaf, is shown to the policy with the task, the action/observation history before it and the step itself
(template `agent_r_judge`; the environment is named by `JudgeSettings.environment`, never "science task"). The
reply must end "Judgement: Good|Bad|Uncertain"; `parse_judgement` gives the verdict (good, bad, uncertain or
unparsed), the rationale (the text before the label) and parse_ok, and the raw text is kept beside them.

Walk outcomes (`Walk.status`):
- `first_error`: a step was judged Bad; the splice takes the bad path through that step (`end`).
- `no_error`: every step was Good or Uncertain; the whole bad path is used (end-of-trajectory revision).
- `unparsed` (default, `on_unparsed="stop"`): a reply could not be parsed; the walk stops there and gives no
  splice (`end` is None). An unreadable judgement is not a judgement of Bad.
- `unparsed_as_bad` (`on_unparsed="treat_as_bad"`, Agent-R's behaviour): the unparsed step is taken as the first
  error. Its verdict stays `unparsed` in the record.
- `judge_error`: the policy call failed; no splice.

A step's judgement depends only on the step and its path, so `StepJudge` judges each node once per tree and
reuses the answer for every pair whose bad path passes through it (concurrent walks share one call).
"""
from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from pipelines.methods.agent_r.mcts import Policy
from pipelines.methods.agent_r.pairs import Pair
from pipelines.methods.agent_r.tree import Node, Tree
from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, one_of, text_budget
from stages.prompts import load_template

VERDICTS = ("good", "bad", "uncertain", "unparsed")
JUDGEMENT_LABEL = "Judgement"
WORDS = ("Good", "Bad", "Uncertain")      # what a judge writes after the label (prompts/agent_r_judge.txt)

# "Judgement:" / "Judgment:", markdown around the label or the word ("**Judgement:** Bad", "Judgement: `Good`")
_LABEL = re.compile(r"judge?ment\s*[*_`]*\s*[:：]", re.IGNORECASE)
_WORD = re.compile(r"[A-Za-z]+")


def parse_judgement(text: str) -> tuple[str, str, bool]:
    """(verdict, rationale, parse_ok) from a judge reply. The last "Judgement:" label counts; the first word on
    its line after it must be good, bad or uncertain, and the line must name no other verdict ("Good or Bad" is
    unparsed). The rationale is the text before the label. Anything else: ("unparsed", text, False)."""
    raw = text if isinstance(text, str) else ""
    labels = list(_LABEL.finditer(raw))
    if not labels:
        return "unparsed", raw.strip(), False
    m = labels[-1]
    line = raw[m.end():].split("\n", 1)[0]
    words = [w.lower() for w in _WORD.findall(line)]
    named = {w for w in words if w in ("good", "bad", "uncertain")}
    if not words or words[0] not in ("good", "bad", "uncertain") or len(named) != 1:
        return "unparsed", raw.strip(), False
    return words[0], raw[:m.start()].strip(), True


class StepJudgementFormat(OutputFormat):
    """A few sentences of reasoning, then the last line `Judgement: Good|Bad|Uncertain`."""
    name, kind = "step_judgement", "regex"
    lines = 4

    def constraint(self, max_tokens: int = 160) -> Constraint:
        per_line = max(10, text_budget(max_tokens) // self.lines)
        return Constraint(regex=rf"({LINE}{{1,{per_line}}}\n){{0,{self.lines}}}{JUDGEMENT_LABEL}: {one_of(WORDS)}")

    def parse(self, text: str) -> tuple[str, str, bool]:
        return parse_judgement(text)


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    template: str = Field("agent_r_judge", description="prompt template (pipelines/methods/agent_r/prompts/)")
    temperature: float = Field(0.0, ge=0.0, description="sampling temperature of the judge calls (0: greedy, so a "
                                                        "step's verdict is reproducible; Agent-R sampled at TEMP)")
    on_unparsed: Literal["stop", "treat_as_bad"] = Field(
        "stop", description="an unparseable judgement: stop the walk and make no splice (stop), or take the step "
                            "as the first error as Agent-R did (treat_as_bad); the verdict is recorded as unparsed "
                            "either way")
    environment: str = Field("a text-based environment", description="how the prompt names the environment, e.g. "
                                                                     "'a text crafting game'")
    max_history_steps: Optional[int] = Field(None, ge=0, description="show only the last N earlier steps in the "
                                                                     "prompt (None: all)")
    constraint: Optional[Constraint] = Field(None, description="the judge replies' constraint (None: free text)")


@dataclass
class Judgement:
    depth: int
    node_id: str
    action: Optional[str]
    verdict: str                          # good | bad | uncertain | unparsed
    rationale: str
    raw_text: str
    parse_ok: bool


@dataclass
class Walk:
    judgements: list[Judgement]
    status: str                           # first_error | no_error | unparsed | unparsed_as_bad | judge_error
    end: Optional[Node]                   # the last bad step the splice includes; None: no splice
    first_error_depth: Optional[int]      # depth of the step taken as the first error; None when none was
    error: Optional[str] = None
    template: str = ""                    # name@version of the judge prompt

    @property
    def usable(self) -> bool:
        return self.end is not None


def task_text(tree: Tree) -> str:
    if tree.task.instruction and tree.task.instruction.strip():
        return tree.task.instruction.strip()
    return tree.opening[0]["content"] if tree.opening else ""


def history_text(tree: Tree, node: Node, max_steps: Optional[int] = None) -> str:
    """The start observation, then "Action: ... / Observation: ..." for each step before `node`."""
    steps = node.lineage()[1:-1]
    lines = [f"Observation at the start: {tree.root.observation}"] if tree.root is not None else []
    if max_steps is not None and len(steps) > max_steps:
        lines.append(f"({len(steps) - max_steps} earlier steps left out)")
        steps = steps[len(steps) - max_steps:] if max_steps else []
    for n in steps:
        lines.append(f"Action: {n.action if n.parse_ok else '(no valid action) ' + n.raw_text.strip()}")
        lines.append(f"Observation: {n.observation}")
    return "\n".join(lines)


def judge_prompt(tree: Tree, node: Node, settings: JudgeSettings) -> str:
    tpl = load_template(settings.template)
    action = node.action if node.parse_ok else f"(no valid action) {node.raw_text.strip()}"
    return tpl.render(environment=settings.environment, task=task_text(tree),
                      history=history_text(tree, node, settings.max_history_steps), action=action,
                      observation=node.observation)


class StepJudge:
    """Judges the nodes of one tree with the policy, each node once (concurrent requests share one call)."""

    def __init__(self, tree: Tree, policy: Policy, settings: Optional[JudgeSettings] = None):
        self.tree, self.policy = tree, policy
        self.settings = settings or JudgeSettings()
        self.template = load_template(self.settings.template).ref
        self.stats: Counter = Counter()
        self._cache: dict[str, asyncio.Future] = {}

    async def judge(self, node: Node) -> Judgement:
        """The node's judgement; raises what the policy raised (the walk records it)."""
        fut = self._cache.get(node.node_id)
        if fut is None:
            fut = asyncio.ensure_future(self._ask(node))
            self._cache[node.node_id] = fut
        else:
            self.stats["judge_cache_hits"] += 1
        return await asyncio.shield(fut)

    def judged(self) -> list[Judgement]:
        """Every judgement made so far (one per node), in the order they were asked for; failed calls left out."""
        return [f.result() for f in self._cache.values() if f.done() and not f.cancelled() and f.exception() is None]

    async def _ask(self, node: Node) -> Judgement:
        prompt = judge_prompt(self.tree, node, self.settings)
        self.stats["judge_calls"] += 1
        try:
            extra = {"constraint": self.settings.constraint} if self.settings.constraint is not None else {}
            texts = await self.policy([{"role": "user", "content": prompt, "loss": False}], 1,
                                      self.settings.temperature, **extra)
            if not texts:
                raise ValueError("the policy returned no text")
        except Exception:
            self.stats["judge_errors"] += 1
            raise
        raw = texts[0] if isinstance(texts[0], str) else ""
        verdict, rationale, ok = parse_judgement(raw)
        self.stats[f"verdict_{verdict}"] += 1
        return Judgement(depth=node.depth, node_id=node.node_id, action=node.action, verdict=verdict,
                         rationale=rationale, raw_text=raw, parse_ok=ok)


async def first_error_walk(tree: Tree, pair: Pair, judge: StepJudge) -> Walk:
    """Judge the bad path of `pair` from its divergence child to its bad leaf, stopping at the first Bad (or at
    an unparsed reply, see the module docstring)."""
    steps = pair.bad.lineage()[pair.divergence.depth + 1:]
    judgements: list[Judgement] = []
    for node in steps:
        try:
            j = await judge.judge(node)
        except Exception as e:
            return Walk(judgements, "judge_error", None, None, error=f"{type(e).__name__}: {e}",
                        template=judge.template)
        judgements.append(j)
        if j.verdict == "bad":
            return Walk(judgements, "first_error", node, node.depth, template=judge.template)
        if j.verdict == "unparsed":
            if judge.settings.on_unparsed == "treat_as_bad":
                return Walk(judgements, "unparsed_as_bad", node, node.depth, template=judge.template)
            return Walk(judgements, "unparsed", None, None, template=judge.template)
    return Walk(judgements, "no_error", pair.bad, None, template=judge.template)
