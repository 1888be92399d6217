"""The ReAct turn format used by Agent-R: the conversation's opening, parsing a model's turn, and trimming
a long conversation to a token budget.

A policy turn is
    Thought: <reasoning>
    Action: <one action>
The conversation opens with the instruction (user), "OK" (assistant), then the first observation (user); after
that, assistant turns (the policy's text) and user turns (observations) alternate. Messages are dicts
{"role", "content", "loss"}: `loss` True only on assistant turns a model should learn from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from stages.engines.base import Constraint
from stages.formats import LINE, OutputFormat

THOUGHT_LABEL, ACTION_LABEL = "Thought", "Action"

REACT_FORMAT = f"""You act in an environment, one step at a time, to complete a task. After each of your \
replies the environment answers with an observation.

Reply in exactly this format:
{THOUGHT_LABEL}: <your reasoning about the situation and what to do next>
{ACTION_LABEL}: <exactly one action, written as the environment expects it>

Give exactly one Action line per reply, with nothing after it. If the environment says an action failed, read \
why, and try something else."""

OK = "OK"


@dataclass
class ReactTurn:
    thought: Optional[str]
    action: Optional[str]
    parse_ok: bool
    raw: str


# A label at the start of a line, allowing markdown around it: "Action:", "**Action:**", "**Action**:",
# "### Action:", "> Action:", "- Action:", "Action :", full-width colon.
_DECOR = r"[\s>*_#`\-]*"
_LABEL = r"(?P<label>thought|thinking|reasoning|action)"
_LINE_LABEL = re.compile(rf"^{_DECOR}{_LABEL}\s*[*_`]*\s*[:：]\s*[*_`]*(?P<rest>.*)$", re.IGNORECASE)
_INLINE_ACTION = re.compile(r"(?<![A-Za-z])action\s*[*_`]*\s*[:：][*_`]*(?P<rest>.*)$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(```|~~~)")
_EDGE = "*_`'\" \t"


def _clean_action(text: str) -> Optional[str]:
    a = text.strip()
    prev = None
    while a != prev:                      # peel matching markdown/quotes from both ends: **`get 1 x`**
        prev = a
        a = a.strip()
        for mark in ("**", "__", "`", "*", "_", '"', "'"):
            if len(a) > 2 * len(mark) and a.startswith(mark) and a.endswith(mark):
                a = a[len(mark):-len(mark)]
        a = a.lstrip("*_` ").rstrip("*_` ") if a.strip(_EDGE) else ""
    a = a.strip()
    return a or None


def parse_react(text: str) -> ReactTurn:
    """Thought and action of one policy turn. Takes the first Action label (a line starting with it, markdown
    allowed; else an inline "Action:"), the first line after it as the action (or the next non-empty line when
    the label's line is empty), and ignores what follows. Thought: the text before the action, less a leading
    Thought label; None if empty. No action found: parse_ok False and action None (never a guess)."""
    raw = text if isinstance(text, str) else ""
    lines = [ln for ln in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n") if not _FENCE.match(ln)]
    act_at, action = None, None
    for i, ln in enumerate(lines):
        m = _LINE_LABEL.match(ln)
        if m and m.group("label").lower() == "action":
            act_at, rest = i, m.group("rest")
            if not rest.strip(_EDGE):                 # "Action:" alone: the action is on the next line
                nxt = next((x for x in lines[i + 1:] if x.strip()), "")
                rest = "" if _LINE_LABEL.match(nxt) else nxt
            action = _clean_action(rest)
            before = lines[:i]
            break
    if act_at is None:                                # "Thought: ... Action: go north" on one line
        for i, ln in enumerate(lines):
            m = _INLINE_ACTION.search(ln)
            if m:
                act_at, action = i, _clean_action(m.group("rest"))
                before = lines[:i] + [ln[:m.start()]]
                break
    if act_at is None:
        before = lines
    thought = _thought("\n".join(before))
    return ReactTurn(thought=thought, action=action, parse_ok=action is not None, raw=raw)


def _thought(text: str) -> Optional[str]:
    t = text.strip()
    m = _LINE_LABEL.match(t.split("\n", 1)[0]) if t else None
    if m and m.group("label").lower() != "action":
        t = (m.group("rest") + ("\n" + t.split("\n", 1)[1] if "\n" in t else "")).strip()
    t = t.strip(_EDGE + "\n")
    return t or None


def format_turn(thought: Optional[str], action: str) -> str:
    """The canonical text of a policy turn."""
    return f"Thought: {thought or ''}".rstrip() + f"\nAction: {action}"


def message(role: str, content: str, loss: Optional[bool] = None) -> dict:
    """A message; `loss` defaults to True for assistant turns and False for user turns."""
    return {"role": role, "content": content, "loss": (role == "assistant") if loss is None else bool(loss)}


def initial_messages(instruction: str, first_observation: str) -> list[dict]:
    """Agent-R's opening: the instruction with the ReAct format (user), "OK" (assistant, no loss), then the
    first observation (user)."""
    text = REACT_FORMAT + ("\n\n" + instruction.strip() if instruction and instruction.strip() else "")
    return [message("user", text), message("assistant", OK, loss=False), message("user", first_observation)]


def trim_context(messages: list[dict], count_tokens: Callable[[list[dict]], int],
                 budget: int) -> tuple[list[dict], int]:
    """Drop the oldest (assistant, user) pairs after the opening three messages until
    `count_tokens(messages) <= budget`. The instruction, "OK", the first observation and the last pair (the
    latest observation) are never dropped, so the result may still exceed the budget: callers check.
    Returns (a new list, pairs dropped)."""
    head, tail = list(messages[:3]), list(messages[3:])
    if len(tail) % 2 or any(m["role"] != r for m, r in zip(tail, ["assistant", "user"] * len(tail))):
        raise ValueError("after the first three messages, assistant and user turns must alternate in pairs")
    dropped = 0
    while len(tail) > 2 and count_tokens(head + tail) > budget:
        tail = tail[2:]
        dropped += 1
    return head + tail, dropped


class ReactTurnFormat(OutputFormat):
    """One policy turn, `Thought: <one line>` then `Action: <one action>`: the labels of REACT_FORMAT, the action
    held to the environment's action pattern (`Env.action_pattern()`, a regex) where it gives one, else one line.
    The parser is `parse_react`, which reads this shape and looser ones."""
    name, kind = "react_turn", "regex"

    def constraint(self, action_pattern: Optional[str] = None, max_tokens: int = 96) -> Constraint:
        action = f"({action_pattern})" if action_pattern else f"{LINE}{{1,100}}"
        # the thought leaves room for the longest action (~20 tokens) and counts 2 characters a token, so the
        # Action line is written before max_tokens cuts the turn
        thought = f"{LINE}{{1,{max(20, (max_tokens - 48) * 2)}}}"
        return Constraint(regex=f"{THOUGHT_LABEL}: {thought}\n{ACTION_LABEL}: {action}")

    def parse(self, text: str) -> ReactTurn:
        return parse_react(text)

