"""The built-in methods. A method lives in one package here: its stages (`*_stages.py`), row types (`rows.py`),
prompts (`prompts/`), recipes (`recipes/*.yaml`), exports (`exports.py`) and build summary; its `__init__.py`
registers it (`METHOD`). Stages that several methods share stay in stages/, the build machinery in pipelines/.

A method of your own needs no edit here: name it in a recipe as `method: "package.module:NAME"`, or publish it as
an entry point of the group `errata.methods` (schemas/registry.py loads both).
"""
from __future__ import annotations

import importlib

BUILTIN = ("sample_verify", "self_correct", "lemma", "agent_rollout", "agent_r", "critique", "step")


def load_builtin() -> None:
    """Import every built-in method package (each registers its tables, exports and method)."""
    importlib.import_module("schemas.clean_rows")    # the cleaning stages' tables, which any method may write
    for name in BUILTIN:
        importlib.import_module(f"{__name__}.{name}")
