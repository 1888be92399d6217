"""STeP's teacher: its two output formats (a step verdict; a reflection with a corrected step), their parsers and its
prompts (prompts/step_judge.txt, prompts/step_correct.txt).

    VerdictFormat().constraint(max_tokens=64)      # "Reason: <one line>\\nVerdict: ok|error"
    parse_verdict("Reason: the env refused it\\nVerdict: error")   # ("error", "the env refused it", True)
    CorrectionFormat().constraint(action_pattern=env.action_pattern(), max_tokens=128)
    parse_correction(text)                         # Correction(reflection, thought, action, parse_ok)

A verdict that cannot be read is `unparsed`, never `error`: the step is then handled as the teacher had said ok
(docs/methods/step.md). A correction without a reflection or an action does not parse, and no intervention is made.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from stages.agents.react import parse_react
from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat, one_of, text_budget
from stages.prompts import load_template

VERDICTS = ("ok", "error")
VERDICT_LABEL, REASON_LABEL, REFLECTION_LABEL = "Verdict", "Reason", "Reflection"
ENV_NAMES = {"craft": "a text-based crafting game", "twx": "a text-based game (TextWorldExpress)"}

_VERDICT = re.compile(r"verdict\s*[*_`]*\s*[:：]\s*[*_`]*\s*(?P<word>[A-Za-z]+)", re.IGNORECASE)
_REASON = re.compile(r"reason\s*[*_`]*\s*[:：](?P<rest>[^\n]*)", re.IGNORECASE)
_REFLECTION = re.compile(r"^[\s>*_#`\-]*reflection\s*[*_`]*\s*[:：](?P<rest>.*)$", re.IGNORECASE | re.MULTILINE)
_SYNONYMS = {"ok": "ok", "okay": "ok", "correct": "ok", "good": "ok", "error": "error", "wrong": "error",
             "incorrect": "error", "bad": "error", "mistake": "error"}


def parse_verdict(text: str) -> tuple[str, str, bool]:
    """(verdict, reason, parse_ok): the first "Verdict:" label's word (ok / error, or a plain synonym such as
    correct / wrong); the reason is the first "Reason:" line's text (before or after the verdict). Anything else: ("unparsed", "", False)."""
    raw = text if isinstance(text, str) else ""
    m = _VERDICT.search(raw)
    verdict = _SYNONYMS.get(m.group("word").lower()) if m else None
    if verdict is None:
        return "unparsed", "", False
    r = _REASON.search(raw)
    return verdict, (r.group("rest").strip() if r else ""), True


@dataclass
class Correction:
    reflection: Optional[str]
    thought: Optional[str]
    action: Optional[str]
    parse_ok: bool
    raw: str


def parse_correction(text: str) -> Correction:
    """The reflection (the "Reflection:" line) and the corrected step (parse_react over the rest). parse_ok needs
    both a non-empty reflection and an action."""
    raw = text if isinstance(text, str) else ""
    m = _REFLECTION.search(raw)
    reflection = m.group("rest").strip(" *_`\t") if m else ""
    turn = parse_react(raw[m.end():] if m else raw)
    ok = bool(reflection) and turn.parse_ok
    return Correction(reflection or None, turn.thought, turn.action, ok, raw)


class VerdictFormat(OutputFormat):
    """`Reason: <one line>` then `Verdict: ok|error`: the reason first, so the verdict follows from what the teacher
    wrote about the observation (a small teacher that writes the verdict first mostly writes ok)."""
    name, kind = "step_verdict", "regex"

    def constraint(self, max_tokens: int = 64) -> Constraint:
        reason = max(10, text_budget(max_tokens, reserve=12))
        return Constraint(regex=f"{REASON_LABEL}: {LINE}{{1,{reason}}}\n{VERDICT_LABEL}: {one_of(VERDICTS)}")

    def parse(self, text: str) -> tuple[str, str, bool]:
        return parse_verdict(text)


class CorrectionFormat(OutputFormat):
    """`Reflection: <one line>`, `Thought: <one line>`, `Action: <an action of the env's pattern>`."""
    name, kind = "step_correction", "regex"

    def constraint(self, action_pattern: Optional[str] = None, max_tokens: int = 128) -> Constraint:
        action = f"({action_pattern})" if action_pattern else f"{LINE}{{1,100}}"
        free = max(40, (max_tokens - 40) * 2)          # leaves room for the action (~20 tokens) and the labels
        return Constraint(regex=f"{REFLECTION_LABEL}: {LINE}{{1,{free // 2}}}\nThought: {LINE}{{1,{free // 2}}}\n"
                                f"Action: {action}")

    def parse(self, text: str) -> Correction:
        return parse_correction(text)


def correction_text(reflection: str, thought: Optional[str], action: str) -> str:
    """The assistant turn a correction becomes in the trajectory: the reflection, then the corrected ReAct step."""
    return f"{REFLECTION_LABEL}: {reflection}\n" + f"Thought: {thought or ''}".rstrip() + f"\nAction: {action}"


def environment_name(env: str) -> str:
    return ENV_NAMES.get(env, f"a text-based environment ({env})")


def history_text(first_observation: str, steps: list[dict], max_steps: Optional[int] = None) -> str:
    """The start observation, then "Action: ... / Observation: ..." for each executed step (corrections too)."""
    lines = [f"Observation at the start: {first_observation}"]
    if max_steps is not None and len(steps) > max_steps:
        lines.append(f"({len(steps) - max_steps} earlier steps left out)")
        steps = steps[len(steps) - max_steps:] if max_steps else []
    for s in steps:
        lines.append(f"Action: {s['action'] if s['parse_ok'] else '(no valid action) ' + s['raw_text'].strip()}")
        lines.append(f"Observation: {s['observation']}")
    return "\n".join(lines)


def judge_prompt(environment: str, task: str, first_observation: str, history: list[dict], step: dict,
                 max_history: Optional[int] = None) -> str:
    tpl = load_template("step_judge")
    action = step["action"] if step["parse_ok"] else f"(no valid action) {step['raw_text'].strip()}"
    return tpl.render(environment=environment, task=task,
                      history=history_text(first_observation, history, max_history),
                      thought=step.get("thought") or "", action=action, observation=step["observation"])


def correct_prompt(environment: str, task: str, first_observation: str, history: list[dict], reason: str,
                   max_history: Optional[int] = None) -> str:
    """`history` ends with the erroneous step."""
    tpl = load_template("step_correct")
    return tpl.render(environment=environment, task=task,
                      history=history_text(first_observation, history, max_history),
                      reason=reason.strip() or "the teacher judged it wrong")
