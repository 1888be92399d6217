"""What revision tables share: a `Segment` of a revised text with its author and per-segment loss flag, and the
columns every revision row starts with (`RevisionColumns`).

Each revising method has its own table with its own columns (LEMMA's `revisions`,
pipelines/methods/lemma/rows.py; Agent-R's `revision_trajectories`, pipelines/methods/agent_r/rows.py). The loss
flag of every segment and message is kept end to end: no converter may drop it (tests/unit/test_agent_r.py and
tests/unit/test_lemma_build.py fail if one does).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.rows import Lineage


@dataclass
class Segment:
    text: str = field(metadata={"doc": "the segment's text (a text revision's segments joined with '' give `text`)"})
    author: str = field(metadata={"doc": "who wrote it: model (the erroneous part, as the model wrote it), "
                                         "template (a transition phrase / revision signal), teacher (an LLM's fix), "
                                         "rules (programmatic), env (an observation)"})
    loss: bool = field(default=False, metadata={"doc": "a model should learn this segment"})


@dataclass
class RevisionColumns(Lineage):
    """The columns every revision table starts with; each method's row type adds its own."""
    revision_id: str = field(default="", metadata={"doc": "stable id of the revision"})
    strategy: str = field(default="", metadata={"doc": "fix_continue, fresh_restart (LEMMA), splice (Agent-R); "
                                                       "Agent-R's good trajectories: none"})
    kind: str = field(default="revision", metadata={"doc": "revision (a revised trajectory) or good (a "
                                                           "trajectory kept as it is, full loss)"})
    problem_id: str = field(default="", metadata={"doc": "the problem / env task"})
    segments: list[Segment] = field(default_factory=list, metadata={"doc": "the text in order, each with its "
                                                                           "author and loss flag"})
