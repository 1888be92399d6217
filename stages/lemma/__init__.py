"""LEMMA (Learning from Errors for MatheMatical Advancement, arXiv 2503.17439): the model-free parts.

The method turns wrong solutions into revision trajectories: locate the first wrong step of a student's
solution and classify its error type (a teacher judge), make more errors of those types (a teacher playing a
careless student, or the programmatic injector here for built-in arithmetic problems), then write a revision
that keeps the erroneous prefix through the first wrong step verbatim, adds one transition phrase and either
fixes the step and continues ("fix & continue") or switches to another approach ("fresh & restart").

Modules (pure Python, no engine, no Ray/Prefect; the LEMMA stages wrap them):
- `taxonomy`       -- the 12 error labels, the 6 injection types, label aliases, transition phrases and finding them.
- `judge`          -- parse the teacher judge's answer (first wrong step, error type) with raw text and parse_ok.
- `inject_parse`   -- parse a teacher-injected solution (solution text, final answer, <explanation>).
- `rules_injector` -- programmatic errors in built-in arithmetic problems, with exact first-error steps and the
                      matching fix & continue revision.
- `revisions`      -- build revision segments and check a teacher's revision (prefix kept, one transition, no
                      mention of a previous attempt or a reference), returning a drop reason.

Prompt templates live in stages/prompts/lemma_*.txt. Step splitting is stages/steps.py.
"""
