"""What revision tables share: a `Segment` of a revised text with its author and per-segment loss flag.

Each revising method has its own table with its own columns (LEMMA's `revisions`,
pipelines/methods/lemma/rows.py; Agent-R's `revision_trajectories`, pipelines/methods/agent_r/rows.py). The loss
flag of every segment and message is kept end to end: no converter may drop it (tests/unit/test_agent_r.py and
tests/unit/test_lemma_build.py fail if one does).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Segment:
    text: str = field(metadata={"doc": "the segment's text (a text revision's segments joined with '' give `text`)"})
    author: str = field(metadata={"doc": "who wrote it: model (the erroneous part, as the model wrote it), "
                                         "template (a transition phrase / revision signal), teacher (an LLM's fix), "
                                         "rules (programmatic), env (an observation)"})
    loss: bool = field(default=False, metadata={"doc": "a model should learn this segment"})
