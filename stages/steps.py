"""Split a worked solution into steps, keeping the offsets of every step in the original text.

A judge is shown the steps numbered ("Step 1: ...\\nStep 2: ..."), answers "the first wrong step is N", and a
revision then starts with the solution's text through step N *verbatim*. So a split must (1) never cut inside a
number, an abbreviation or a formula, and (2) let us recover the exact original text of steps 1..N. Every `Step`
therefore carries `start`/`end` offsets into the source, and `prefix_through(split, k)` is `source[:steps[k-1].end]`:
an exact substring of the solution from its start (any text before step 1 and between steps comes along).

How a text is split (`split_solution(text)`, first rule that applies):

1. ``numbered``   -- at least two sequential step markers 1, 2, ... : "Step 1:", "**Step 1**", "### Step 2.",
   "1.", "2)", "(3)" at the start of a line, or "Step N:" inside a line. Text before the first marker is its own
   step (a preamble).
2. ``paragraphs`` -- the text has two or more blank-line-separated paragraphs: one step per paragraph.
3. ``lines``      -- one paragraph of several lines: one step per line.
4. ``sentences``  -- one paragraph on one line (or whose lines all join up, see below): one step per sentence.

Nothing is ever split inside a protected span: ``$...$``, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)``,
``\\begin{env}...\\end{env}``, ``[asy]...[/asy]`` and GSM8K calculator notes ``<<...>>``. A ``$`` that opens a
money amount ("$1,200.50", "$5 and $6") is not taken for math. Lines and paragraphs join up when the break is
not a real boundary: the next chunk is only display math or starts with it, the next line starts with ``=`` or a
lowercase word after a line that did not end a sentence, or the previous line ends with ``:`` or ``,``.
Sentences end at ``.``/``!``/``?`` (also just inside a closing ``$``: "... = 3.$  Also") followed by space and a
non-lowercase character, never after an abbreviation ("Mr.", "Dr.", "e.g.", "i.e.", "vs.", ...) nor inside a
decimal ("3.5"). A final-answer line ("The answer is: 5", "#### 5", "Final answer: ...") is its own (last)
step when it sits on its own line; in sentence mode, and at the end of the last numbered step, a final-answer
sentence ("... = 5. The answer is 5") is too. In paragraph mode a final sentence inside the last paragraph stays
there (paragraphs are the steps as written, the convention of ProcessBench's step labels).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

__all__ = ["Step", "SplitSolution", "split_solution", "split_steps", "step_rows", "number_steps", "join_steps",
           "prefix_through", "protected_spans", "strip_step_marker", "is_final_answer_line", "SPLIT_MODES"]

SPLIT_MODES = ("numbered", "paragraphs", "lines", "sentences", "empty")


@dataclass(frozen=True)
class Step:
    """One step: `text` is exactly `source[start:end]` (no surrounding whitespace). `index` is 1-based."""

    index: int
    text: str
    start: int
    end: int

    @property
    def body(self) -> str:
        """The text without a leading step marker ("Step 2: x" -> "x"); what `number_steps` shows."""
        return strip_step_marker(self.text)


@dataclass(frozen=True)
class SplitSolution:
    """A solution and its steps. `mode` is the rule that split it (one of SPLIT_MODES)."""

    source: str
    steps: tuple[Step, ...]
    mode: str

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.steps]

    def prefix_through(self, k: int) -> str:
        return prefix_through(self, k)


# ------------------------------------------------------------------------------------------- protected spans

_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n\s*")
_LINE_BREAK = re.compile(r"\n")
_BEGIN = re.compile(r"\\begin\{([^{}\s]+)\}")
_WORDS = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}\s+[A-Za-z]{2,}\b")
_PLAIN_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|textit|mbox|operatorname)\s*\{[^{}]*\}")


def _find_unescaped(text: str, needle: str, start: int, stop: int) -> int:
    """Index of `needle` in text[start:stop] not preceded by an odd number of backslashes, or -1."""
    i = start
    while True:
        j = text.find(needle, i, stop)
        if j < 0:
            return -1
        k, bs = j - 1, 0
        while k >= start and text[k] == "\\":
            bs, k = bs + 1, k - 1
        if bs % 2 == 0:
            return j
        i = j + 1


def _match_env(text: str, m: re.Match) -> int:
    """End offset of the \\end{} matching the \\begin{} at m (same name, nested), or -1."""
    name = m.group(1)
    pat = re.compile(r"\\(begin|end)\{" + re.escape(name) + r"\}")
    depth, pos = 1, m.end()
    for t in pat.finditer(text, pos):
        depth += 1 if t.group(1) == "begin" else -1
        if depth == 0:
            return t.end()
    return -1


def _inline_dollar_end(text: str, i: int) -> int:
    """End (exclusive) of an inline `$...$` opened at i, or -1 when the `$` is a money sign / unclosed."""
    para_end = _PARAGRAPH_BREAK.search(text, i + 1)
    stop = para_end.start() if para_end else len(text)
    j = _find_unescaped(text, "$", i + 1, stop)
    if j < 0:
        return -1
    content = text[i + 1:j]
    if not content.strip():
        return -1
    money = re.match(r"[ \t]*(?:\d|<<)", content) is not None
    if money:  # "$5 and $6", "$3.5 * 4000 = $14,000": a money sign unless the content looks like a formula
        if content != content.strip() or "\n" in content or "<<" in content:
            return -1
        if _PLAIN_WORD.search(_TEXT_CMD.sub(" ", content)):
            return -1  # "$30 = 15 * p. Finally, p = $": prose between two money signs
    elif content[-1].isspace() and _WORDS.search(_TEXT_CMD.sub(" ", content)):
        return -1  # "$ off, then ... $" -- prose between two money signs
    elif "\n" in content and (content[0].isspace() or (i > 0 and (text[i - 1].isdigit() or text[i - 1] == ">"))):
        return -1  # "6$\nTuesday: 12$": a dollar sign written after the amount, not math across a line break
    return j + 1


def protected_spans(text: str) -> list[tuple[int, int]]:
    """Sorted, non-overlapping (start, end) spans that a split must not cut: math, environments, [asy], <<..>>."""
    spans: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        end = -1
        if c == "\\":
            nxt = text[i + 1:i + 2]
            if nxt == "[":
                j = _find_unescaped(text, "\\]", i + 2, n)
                end = j + 2 if j >= 0 else -1
            elif nxt == "(":
                j = _find_unescaped(text, "\\)", i + 2, n)
                end = j + 2 if j >= 0 else -1
            elif text.startswith("\\begin{", i):
                m = _BEGIN.match(text, i)
                end = _match_env(text, m) if m else -1
            if end < 0:
                i += 2  # an escaped character (\$, \\) or a command: skip both characters
                continue
        elif c == "$":
            if text.startswith("$$", i):
                j = _find_unescaped(text, "$$", i + 2, n)
                end = j + 2 if j >= 0 else -1
            else:
                end = _inline_dollar_end(text, i)
        elif text.startswith("[asy]", i):
            j = text.find("[/asy]", i + 5)
            end = j + 6 if j >= 0 else -1
        elif text.startswith("<<", i):
            j = text.find(">>", i + 2)
            end = j + 2 if j >= 0 and "\n" not in text[i:j] else -1
        if end > i:
            spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


class _Guard:
    """Answers `inside(pos)`: is the gap before text[pos] strictly inside a protected span?"""

    def __init__(self, spans: Sequence[tuple[int, int]]):
        self.spans = sorted(spans)
        self._starts = [a for a, _ in self.spans]
        self._by_end = {b: (a, b) for a, b in self.spans}

    def inside(self, pos: int) -> bool:
        i = bisect.bisect_left(self._starts, pos) - 1   # the last span starting before pos
        return i >= 0 and pos < self.spans[i][1]

    def span_ending_at(self, pos: int) -> Optional[tuple[int, int]]:
        return self._by_end.get(pos)

    def only_protected(self, text: str, start: int, end: int) -> bool:
        """True when text[start:end] is protected spans and whitespace/punctuation only (a lone display block)."""
        pos = start
        for a, b in self.spans:
            if b <= start or a >= end:
                continue
            if text[pos:a].strip(" \t\n.,;"):
                return False
            pos = max(pos, b)
        return not text[pos:end].strip(" \t\n.,;") and pos > start


# ------------------------------------------------------------------------------------------- markers, answers

_MARKER_LINE = re.compile(
    r"(?im)^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*"
    r"(?:(?P<kw>step)[ \t]*(?P<n1>\d{1,3})(?=[ \t]*(?:[:.)\-–—*_]|$|[ \t]))"
    r"|\(?(?P<n2>\d{1,3})[.)](?=[ \t]))")
_MARKER_INLINE = re.compile(r"(?<=[ \t])(?:\*\*)?Step[ \t]*(?P<n1>\d{1,3})[ \t]*(?:\*\*)?[ \t]*:")
_STRIP_MARKER = re.compile(
    r"^\s*(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:step\s*\d{1,3}\s*(?:\*\*|__)?\s*[:.)\-–—]?|\(?\d{1,3}[.)](?=\s))"
    r"\s*(?:\*\*|__)?\s*", re.IGNORECASE)
_FINAL_LINE = re.compile(
    r"^\s*(?:####\s*\S|(?:\*\*|__)?\s*(?:so,?\s+|therefore,?\s+|thus,?\s+)?(?:the\s+)?(?:final\s+)?answer"
    r"(?:\s+is\b|\s*(?:\*\*)?\s*[:=])|(?:\*\*)?\s*final\s+answer\b|\$*\s*\\boxed\s*\{)", re.IGNORECASE)
_FINAL_INLINE = re.compile(r"(?:####\s*\S|\b(?:the\s+)?(?:final\s+)?answer\s+is\b|\bfinal\s+answer\s*:)",
                           re.IGNORECASE)


def strip_step_marker(text: str) -> str:
    """'Step 3: x' / '**Step 3.** x' / '3) x' -> 'x'; text without a leading marker comes back unchanged."""
    m = _STRIP_MARKER.match(text)
    if not m or m.end() == len(text):
        return text
    return text[m.end():]


def is_final_answer_line(line: str) -> bool:
    """'The answer is: 5', '#### 5', 'Final answer: x', '**Answer:** 5', '\\boxed{5}' at the start of a line."""
    return _FINAL_LINE.match(line) is not None


# ------------------------------------------------------------------------------------------- splitting

# never end a sentence ("Mr. Smith", "e.g. Sam", "No. 5")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "mt", "vs", "e.g", "i.e", "cf", "approx",
                  "fig", "eq", "eqs", "no", "nos", "vol", "ca", "resp", "ph.d", "u.s", "u.k", "dept", "avg"}
# often end a sentence too: a split after them only when a capital (or math) follows ("at 5 p.m. Sam left")
_SENTENCE_FINAL_ABBREVIATIONS = {"etc", "a.m", "p.m", "am", "pm", "ft", "oz", "lb", "lbs", "hr", "hrs", "min",
                                 "max", "inc", "ltd", "co", "corp", "est", "sq"}
_TRAILING_CLOSERS = "\"')]}*’”"


def _is_abbreviation(text: str, dot: int, next_char: str) -> bool:
    """Is the '.' at text[dot] the end of an abbreviation (so no sentence ends here)?"""
    k = dot
    while k > 0 and dot - k < 12 and (text[k - 1].isalpha() or text[k - 1] == "."):
        k -= 1
    if k == dot or (k > 0 and not (text[k - 1].isspace() or text[k - 1] in "([\"'“")):
        return False  # not a word on its own ("M&Ms." is not "Ms.")
    word = text[k:dot].lower()
    if word not in _ABBREVIATIONS and word not in _SENTENCE_FINAL_ABBREVIATIONS:
        return False
    if word in ("no", "nos"):  # "No. 5" is an abbreviation, "the answer is no. Then" is not
        return next_char.isdigit()
    if word in _SENTENCE_FINAL_ABBREVIATIONS:
        return not (next_char.isupper() or next_char in "\"“$\\(")
    return True


def _sentence_breaks(text: str, start: int, end: int, guard: _Guard) -> list[int]:
    """Offsets in (start, end) where a new sentence begins."""
    breaks: list[int] = []
    for m in re.finditer(r"\s+", text[start:end]):
        ws0, ws1 = start + m.start(), start + m.end()
        if ws1 >= end or ws0 <= start or guard.inside(ws0):
            continue
        nxt = text[ws1]
        # a final-answer phrase always starts its own sentence
        if (nxt.isupper() or nxt == "#") and _FINAL_INLINE.match(text, ws1):
            if not text[start:ws0].rstrip().endswith((":", ",")):
                breaks.append(ws1)
                continue
        if nxt.islower() or nxt in ",;:)]}.":
            continue
        # find the terminator before the whitespace: skip closing quotes/brackets and a closing math span
        p = ws0
        while p > start and text[p - 1] in _TRAILING_CLOSERS:
            p -= 1
        span = guard.span_ending_at(p)
        if span is not None:
            a, b = span
            inner_end = b - (2 if text[a:a + 2] in ("$$", "\\(", "\\[") else 1)
            q = inner_end
            while q > a and text[q - 1].isspace():
                q -= 1
            if q > a and text[q - 1] in ".!?":
                breaks.append(ws1)
            continue
        if p <= start or text[p - 1] not in ".!?":
            continue
        dot = p - 1
        if text[dot] == "." and (_is_abbreviation(text, dot, nxt) or (dot > 0 and text[dot - 1] == ".")):
            continue  # "Mr. Smith", "e.g. Sam", an ellipsis "..."
        breaks.append(ws1)
    return breaks


def _chunks(text: str, guard: _Guard, sep: re.Pattern, start: int = 0, end: Optional[int] = None
            ) -> list[tuple[int, int]]:
    """(start, end) of the stripped chunks of text[start:end] between `sep` breaks outside protected spans."""
    end = len(text) if end is None else end
    pieces: list[tuple[int, int]] = []
    pos = start
    for m in sep.finditer(text, start, end):
        if guard.inside(m.start()):
            continue
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, end))
    out = []
    for a, b in pieces:
        seg = text[a:b]
        if seg.strip():
            lead = len(seg) - len(seg.lstrip())
            out.append((a + lead, a + len(seg.rstrip())))
    return out


_LOWER_WORD = re.compile(r"[a-z]{2,}\b")
_DISPLAY_OPEN = re.compile(r"\$\$|\\\[|\\begin\{|\[asy\]")


def _joins_previous(text: str, prev: tuple[int, int], cur: tuple[int, int], guard: _Guard, lines: bool) -> bool:
    """Should chunk `cur` be glued to chunk `prev` (the break between them is not a step boundary)?"""
    p_text = text[prev[0]:prev[1]]
    c_text = text[cur[0]:cur[1]]
    if is_final_answer_line(c_text) or _MARKER_LINE.match(c_text):
        return False
    if _DISPLAY_OPEN.match(c_text) or guard.only_protected(text, cur[0], cur[1]):
        return True  # display math continues the sentence before it
    if lines:
        if c_text[:1] in "=&+" or p_text.endswith((":", "=", "\\\\")):
            return True
        if _LOWER_WORD.match(c_text) and not p_text.rstrip(_TRAILING_CLOSERS + "$").endswith((".", "!", "?")):
            return True
    elif _LOWER_WORD.match(c_text) and guard.only_protected(text, prev[0], prev[1]):
        return True
    return False


def _merge(text: str, chunks: list[tuple[int, int]], guard: _Guard, lines: bool) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for ch in chunks:
        if out and _joins_previous(text, out[-1], ch, guard, lines):
            out[-1] = (out[-1][0], ch[1])
        else:
            out.append(ch)
    return out


def _split_final_answer(text: str, spans: list[tuple[int, int]], guard: _Guard, sentence: bool
                        ) -> list[tuple[int, int]]:
    """If the last span ends with a final-answer line ("...\nThe answer is: 5") or, when `sentence`, a
    final-answer sentence on its last line ("Step 3: ... = 5. The answer is 5"), make that its own span."""
    if not spans:
        return spans
    a, b = spans[-1]
    nl = text.rfind("\n", a, b)
    while nl > a and guard.inside(nl):
        nl = text.rfind("\n", a, nl)
    last_line = a
    if nl > a:
        last_line = nl + 1 + (len(text[nl + 1:b]) - len(text[nl + 1:b].lstrip()))
        if is_final_answer_line(text[last_line:b]) and text[a:nl].strip():
            return spans[:-1] + [(a, a + len(text[a:nl].rstrip())), (last_line, b)]
    breaks = _sentence_breaks(text, last_line, b, guard) if sentence else []
    if breaks and _FINAL_INLINE.match(text, breaks[-1]):
        cut = breaks[-1]
        return spans[:-1] + [(a, a + len(text[a:cut].rstrip())), (cut, b)]
    return spans


def _numbered_starts(text: str, guard: _Guard) -> list[int]:
    """Offsets of the sequential step markers (1, 2, ...), or [] when there are fewer than two."""
    best: list[int] = []
    for kind in ("step", "number"):
        cands: list[tuple[int, int]] = []
        for m in _MARKER_LINE.finditer(text):
            is_step = m.group("kw") is not None
            if is_step != (kind == "step"):
                continue
            off = m.start() + (len(m.group(0)) - len(m.group(0).lstrip()))
            if not guard.inside(off):
                cands.append((off, int(m.group("n1") or m.group("n2"))))
        if kind == "step" and not _PARAGRAPH_BREAK.search(text):  # inline markers: one-paragraph texts only
            for m in _MARKER_INLINE.finditer(text):
                if not guard.inside(m.start()) and all(abs(m.start() - o) > 8 for o, _ in cands):
                    cands.append((m.start(), int(m.group("n1"))))
            cands.sort()
        starts, want = [], 1
        for off, num in cands:
            if num == want:
                starts.append(off)
                want += 1
        if len(starts) >= 2:
            best = starts
            break
    return best


def _stripped(text: str, a: int, b: int) -> tuple[int, int]:
    seg = text[a:b]
    return a + (len(seg) - len(seg.lstrip())), a + len(seg.rstrip())


def split_solution(text: Optional[str]) -> SplitSolution:
    """Split a solution into steps (see the module doc). Never raises; '' or None gives mode 'empty'."""
    text = text if isinstance(text, str) else ""
    if not text.strip():
        return SplitSolution(text, (), "empty")
    guard = _Guard(protected_spans(text))
    spans: list[tuple[int, int]]
    mode: str
    starts = _numbered_starts(text, guard)
    if starts:
        bounds = ([0] if text[:starts[0]].strip() else []) + starts + [len(text)]
        if not text[:starts[0]].strip():
            bounds[0] = 0
        spans = [_stripped(text, a, b) for a, b in zip(bounds, bounds[1:])]
        spans = [s for s in spans if s[1] > s[0]]
        # paragraphs after the last numbered step (a conclusion, the answer) are steps of their own
        last = spans.pop()
        tail = _merge(text, _chunks(text, guard, _PARAGRAPH_BREAK, *last), guard, lines=False)
        spans.extend(tail or [last])
        mode = "numbered"
    else:
        spans = _merge(text, _chunks(text, guard, _PARAGRAPH_BREAK), guard, lines=False)
        mode = "paragraphs"
        if len(spans) < 2:
            spans = _merge(text, _chunks(text, guard, _LINE_BREAK), guard, lines=True)
            mode = "lines"
        if len(spans) < 2:
            a, b = _stripped(text, 0, len(text))
            cuts = [a] + _sentence_breaks(text, a, b, guard) + [b]
            spans = [_stripped(text, x, y) for x, y in zip(cuts, cuts[1:])]
            spans = [s for s in spans if s[1] > s[0]]
            mode = "sentences"
    spans = _split_final_answer(text, spans, guard, sentence=mode == "numbered")
    steps = tuple(Step(i + 1, text[a:b], a, b) for i, (a, b) in enumerate(spans))
    return SplitSolution(text, steps, mode)


def split_steps(text: Optional[str]) -> list[str]:
    """The step texts of `split_solution(text)`."""
    return split_solution(text).texts


def step_rows(solution: Union[SplitSolution, str, None]) -> list[dict]:
    """The `steps` column of a row (schemas.rows.Step): one {idx, text} per step of `split_solution`, idx
    1-based as a judge is shown it ("Step idx: ...") and text the step verbatim, its own marker kept. Every table
    that stores a math solution's steps stores this, so `first_error_step` N is the row with idx N (and, in
    DuckDB's 1-based lists, `steps[N]`)."""
    split = solution if isinstance(solution, SplitSolution) else split_solution(solution)
    return [{"idx": s.index, "text": s.text, "action": None, "observation": None} for s in split.steps]


# ------------------------------------------------------------------------------------------- showing, joining

StepsLike = Union[SplitSolution, Sequence[Union[Step, str]]]


def _texts(steps: StepsLike) -> list[str]:
    items: Iterable = steps.steps if isinstance(steps, SplitSolution) else steps
    return [s.text if isinstance(s, Step) else str(s) for s in items]


def number_steps(steps: StepsLike) -> str:
    """'Step 1: ...\\nStep 2: ...': what a judge is shown. A step's own leading marker is dropped (no
    'Step 2: Step 1: ...'), and newlines inside a step are kept."""
    return "\n".join(f"Step {i}: {strip_step_marker(t).strip()}" for i, t in enumerate(_texts(steps), 1))


def prefix_through(split: SplitSolution, k: int) -> str:
    """The original text from its start through the end of step k (1-based), verbatim. k=0 gives ''."""
    if not isinstance(split, SplitSolution):
        raise TypeError("prefix_through needs a SplitSolution (offsets), not a list of strings")
    if k < 0 or k > len(split.steps):
        raise ValueError(f"step {k} out of range: the solution has {len(split.steps)} steps")
    if k == 0:
        return ""
    return split.source[:split.steps[k - 1].end]


def join_steps(split: SplitSolution, k: Optional[int] = None) -> str:
    """The original text of steps 1..k (all steps when k is None), verbatim: `prefix_through(split, k)`."""
    return prefix_through(split, len(split.steps) if k is None else k)
