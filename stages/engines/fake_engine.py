"""A scripted, deterministic engine for unit tests. No model, no network.

Scripts (EngineConfig.fake_script, or any name registered with `register_script`) map
(request, sample_index) -> completion text, a Completion, or a RowError-like failure (raise FakeFailure).

Built-in scripts read the gold answer from a marker in the prompt, `[gold=<answer>]`:
- `echo_answer` (default): a few step lines ending in "The answer is: <gold>"; without a marker, an answer of 0.
- `wrong`: the same shape with a wrong answer (gold + 1 when numeric, else "wrong").
- `mixed`: `echo_answer` for even sample indexes, `wrong` for odd ones.
- `no_answer`: step lines and no final answer line.
- `truncated`: a cut-off text with finish_reason "length".
- `reviewer`: `mixed`, but answers self-check prompts with a verdict and retry prompts with a correct solution.
- `lemma`: `mixed` for solving prompts; plays LEMMA's teacher on its prompts (pipelines/methods/lemma/prompts/lemma_*.txt): the
  judge names step 2 (or the last step) as the first wrong one, a calculation_error ("Verdict: correct" when the
  question carries `[judge=correct]`, an unparseable reply with `[judge=garbage]`); the injector writes a solution
  whose answer is gold + 1 with an <explanation>; fix/restart prompts get the prefix copied, the asked transition
  and a continuation ending in the gold answer read from the reference in the prompt (`[revise=forbidden]` makes
  it mention "the previous attempt", `[revise=noprefix]` makes it skip the prefix copy); the smoothing prompt
  gets the revision back behind an opening phrase.
A request with a constraint gets a completion that holds to it, as a real engine's would: the script's text when
it already does (for a regex: the whole text, else the first part of it that matches), else the first choice / the
shortest string the regex matches (`honour_constraint`).
A marker `[fail=<reason>]` in the prompt makes that request fail with error_reason <reason> (tests of error rows).
A prompt of more whitespace-separated words than config.max_model_len fails with "prompt_too_long", like vLLM.
Token counts are word counts.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional, Union

from stages.engines.base import Completion, Engine, GenerationRequest, GenerationResult, OnResult
from schemas.errors import ConfigError

GOLD_RE = re.compile(r"\[gold=([^\]]*)\]")
FAIL_RE = re.compile(r"\[fail=([a-z_]+)\]")

ScriptFn = Callable[[GenerationRequest, int], Union[str, Completion]]


class FakeFailure(Exception):
    """Raised by a script to make one request fail with `reason`."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        super().__init__(message or reason)


def request_text(req: GenerationRequest) -> str:
    if req.messages is not None:
        return "\n".join(m.get("content", "") for m in req.messages)
    return req.prompt or ""


def gold_of(req: GenerationRequest) -> Optional[str]:
    m = GOLD_RE.search(request_text(req))
    return m.group(1).strip() if m else None


def _wrong(gold: Optional[str]) -> str:
    try:
        g = float(gold) if gold is not None else 0.0
        w = g + 1
        return str(int(w)) if w == int(w) else str(w)
    except ValueError:
        return "wrong"


def _steps(answer: Optional[str], sample_index: int) -> str:
    lines = [f"Step 1: Read the problem carefully (sample {sample_index}).",
             "Step 2: Work out the quantities involved.",
             "Step 3: Combine them to get the result."]
    if answer is not None:
        lines.append(f"The answer is: {answer}")
    return "\n".join(lines)


def script_echo_answer(req: GenerationRequest, i: int) -> str:
    g = gold_of(req)
    return _steps(g if g is not None else "0", i)


def script_wrong(req: GenerationRequest, i: int) -> str:
    return _steps(_wrong(gold_of(req)), i)


def script_mixed(req: GenerationRequest, i: int) -> str:
    return script_echo_answer(req, i) if i % 2 == 0 else script_wrong(req, i)


def script_no_answer(req: GenerationRequest, i: int) -> str:
    return _steps(None, i)


def script_truncated(req: GenerationRequest, i: int) -> Completion:
    text = "Step 1: Read the problem carefully.\nStep 2: Work out the"
    return Completion(text=text, finish_reason="length", completion_tokens=len(text.split()))


def script_reviewer(req: GenerationRequest, i: int) -> str:
    """`mixed` for solving prompts; for a review prompt ("Verdict: correct"/"incorrect" asked), a verdict that is
    right when the reviewed solution's last line carries the gold answer; for a retry prompt (a review is given),
    a correct solution. Drives the self_correct method in tests."""
    text = request_text(req)
    g = gold_of(req)
    if "Review of the first solution" in text:
        return script_echo_answer(req, i)
    if "Verdict: correct" in text and "Verdict: incorrect" in text:
        ok = g is not None and f"The answer is: {g}\n" in text + "\n"
        return f"I recomputed each step.\nVerdict: {'correct' if ok else 'incorrect'}"
    return script_mixed(req, i)


_REF_GOLD = re.compile(r"####\s*([^\s]+)|The answer is:?\s*([^\s]+)")


def _gold_in(text: str) -> Optional[str]:
    g = GOLD_RE.search(text)
    if g:
        return g.group(1).strip()
    found = list(_REF_GOLD.finditer(text))
    return (found[-1].group(1) or found[-1].group(2)).rstrip(".") if found else None


def script_lemma(req: GenerationRequest, i: int) -> str:
    """See the module doc: LEMMA's judge, injector and reviser, scripted."""
    text = request_text(req)
    if "in which the writer notices a mistake and corrects it" in text:
        body = text.split("Solution:\n", 1)[-1].split("\n\nRewrite it with these rules:", 1)[0]
        return "So, let me think it through. " + body
    if "Find the first step of the student's solution that is wrong" in text:
        if "[judge=correct]" in text:
            return "Verdict: correct"
        if "[judge=garbage]" in text:
            return "I cannot tell."
        n = len(re.findall(r"^Step \d+:", text, re.MULTILINE))
        return (f"Verdict: incorrect\nFirst wrong step: {min(2, max(1, n))}\nError type: calculation_error\n"
                f"Reason: the arithmetic is off.")
    if "Play a careless student" in text:
        ref = text.split("Correct solution", 1)[-1].split("Mistake to make", 1)[0]
        return (f"First I add the numbers wrongly.\nThen I carry that on.\nThe answer is: {_wrong(_gold_in(ref))}"
                f"\n<explanation>The first step adds wrongly.</explanation>")
    if "Solution so far (the last step is wrong):" in text:
        head, rest = text.split("Solution so far (the last step is wrong):\n", 1)
        prefix = rest.split("\n\nWrite, in this order:", 1)[0]
        transition = re.search(r"This sentence, exactly: (.*)", rest).group(1).strip()
        gold = _gold_in(head.split("Problem:", 1)[-1])
        note = " Unlike the previous attempt," if "[revise=forbidden]" in text else ""
        start = "" if "[revise=noprefix]" in text else prefix + "\n"
        return f"{start}{transition}{note} The step should be redone.\nThe answer is: {gold}"
    return script_mixed(req, i)


SCRIPTS: dict[str, ScriptFn] = {
    "lemma": script_lemma,
    "reviewer": script_reviewer,
    "echo_answer": script_echo_answer,
    "wrong": script_wrong,
    "mixed": script_mixed,
    "no_answer": script_no_answer,
    "truncated": script_truncated,
}


def register_script(name: str, fn: ScriptFn) -> None:
    """Add a named script (tests). Stages pick it by EngineConfig.fake_script."""
    SCRIPTS[name] = fn


def shortest_match(pattern: str) -> str:
    """A short string the regex matches whole (the fewest repeats, the first alternative, a plain character from
    each class): what a constrained model that wrote nothing useful would still have to write."""
    import re._constants as C
    import re._parser as P

    def char_in(items) -> str:
        negate = bool(items) and items[0][0] == C.NEGATE
        def ok(ch: str) -> bool:
            hit = False
            for op, av in items:
                if op == C.LITERAL:
                    hit |= ord(ch) == av
                elif op == C.RANGE:
                    hit |= av[0] <= ord(ch) <= av[1]
                elif op == C.CATEGORY:
                    hit |= {C.CATEGORY_DIGIT: ch.isdigit(), C.CATEGORY_NOT_DIGIT: not ch.isdigit(),
                            C.CATEGORY_SPACE: ch.isspace(), C.CATEGORY_NOT_SPACE: not ch.isspace(),
                            C.CATEGORY_WORD: ch.isalnum() or ch == "_",
                            C.CATEGORY_NOT_WORD: not (ch.isalnum() or ch == "_")}.get(av, False)
            return hit != negate
        for ch in "a0 x.-_AZ9":
            if ok(ch):
                return ch
        for op, av in items:                    # a class of rare characters only
            if op == C.LITERAL:
                return chr(av)
            if op == C.RANGE:
                return chr(av[0])
        raise ValueError(f"no character found for class {items}")

    def walk(parsed) -> str:
        out = []
        for op, av in parsed:
            if op == C.LITERAL:
                out.append(chr(av))
            elif op == C.NOT_LITERAL:
                out.append("a" if av != ord("a") else "b")
            elif op == C.ANY:
                out.append("a")
            elif op == C.IN:
                out.append(char_in(av))
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", None)):
                lo, _hi, sub = av
                out.append(walk(sub) * lo)
            elif op == C.SUBPATTERN:
                out.append(walk(av[-1]))
            elif op == C.BRANCH:
                out.append(walk(av[1][0]))
            elif op == C.CATEGORY:
                out.append(char_in([(C.CATEGORY, av)]))
            elif op in (C.AT, C.ASSERT, C.ASSERT_NOT):
                continue
            else:
                raise ValueError(f"regex construct {op} is not supported by the fake engine")
        return "".join(out)
    return walk(P.parse(pattern))


def honour_constraint(text: str, constraint) -> str:
    """The completion a constrained engine would give where the script wrote `text` (see the module doc)."""
    import json
    import re
    if constraint is None:
        return text
    if constraint.kind == "choice":
        if text in constraint.choice:
            return text
        low = text.lower()
        return next((c for c in constraint.choice if c.lower() in low), constraint.choice[0])
    if constraint.kind == "regex":
        rx = re.compile(constraint.regex)
        if rx.fullmatch(text):
            return text
        m = rx.search(text)
        return m.group(0) if m and rx.fullmatch(m.group(0)) else shortest_match(constraint.regex)
    if constraint.kind == "json":
        try:
            json.loads(text)
            return text
        except ValueError:
            return "{}"
    return text          # a grammar: the fake engine does not check it


class FakeEngine(Engine):
    kind = "fake"

    def __init__(self, config: Any, script: Optional[ScriptFn] = None):
        super().__init__(config)
        name = getattr(config, "fake_script", None) or "echo_answer"
        if script is None and name not in SCRIPTS:
            raise ConfigError(f"unknown fake_script '{name}' (known: {', '.join(sorted(SCRIPTS))})")
        self._script = script
        self.script_name = "<function>" if script is not None else name
        self.requests: list[GenerationRequest] = []   # every request seen, in order
        self.generate_calls = 0
        self.started = False
        self.closed = False

    @property
    def model_name(self) -> str:
        return f"fake:{self.script_name}"

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    def _one(self, req: GenerationRequest) -> GenerationResult:
        text = request_text(req)
        prompt_tokens = len(text.split())
        res = GenerationResult(request_id=req.request_id, prompt_tokens=prompt_tokens)
        limit = getattr(self.config, "max_model_len", None)
        fail = FAIL_RE.search(text)
        if limit is not None and prompt_tokens >= limit:
            res.error_reason, res.error_message = "prompt_too_long", \
                f"prompt has {prompt_tokens} tokens, max_model_len is {limit}"
            return res
        if fail:
            res.error_reason, res.error_message = fail.group(1), "scripted failure"
            return res
        script = self._script or SCRIPTS[self.script_name]
        try:
            for i in range(req.sampling.n):
                out = script(req, i)
                if isinstance(out, str):
                    out = honour_constraint(out, req.sampling.constraint)
                    out = Completion(text=out, finish_reason="stop", completion_tokens=len(out.split()))
                res.completions.append(out)
        except FakeFailure as e:
            res.completions = []
            res.error_reason, res.error_message = e.reason, str(e)
        return res

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        self.generate_calls += 1
        self.requests.extend(requests)
        delay = float(getattr(self.config, "fake_delay_s", 0.0) or 0.0)
        if delay:
            import asyncio
            await asyncio.sleep(delay)
        out = [self._one(r) for r in requests]
        for i, r in enumerate(out):
            if on_result is not None:
                on_result(i, r)
        return out

    def describe(self) -> dict[str, Any]:
        return {"engine": self.kind, "model": self.model_name, "script": self.script_name}
