"""A data root for the viewer's tests, built on the scripted fake engine: a LEMMA version (rules injections: exact
first wrong steps), a second LEMMA version with more problems and samples (for diffs), an Agent-R version (MCTS
trees, splices with masked messages), and an SFT export of the first under <root>/exports (for lineage links)."""
from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import MODELS_DIR


def build_viewer_root(root: Path) -> Path:
    from pipelines.build import build
    from pipelines.export import export
    from tests.unit.test_agent_r import recipe as agent_r_recipe
    from tests.unit.test_lemma_build import lemma_recipe
    root.mkdir(parents=True, exist_ok=True)
    before = {k: os.environ.get(k) for k in ("ERRATA_DATA", "ERRATA_MODELS")}
    os.environ["ERRATA_DATA"], os.environ["ERRATA_MODELS"] = str(root), str(MODELS_DIR)
    try:
        tasks = {"kind": "builtin", "count": 6, "seed": 0, "max_steps": 3}
        build(lemma_recipe(root, tasks, injections={"source": "rules"}), progress=False)
        build(lemma_recipe(root, {**tasks, "count": 8}, injections={"source": "rules"}, generate={"n": 3}),
              progress=False)
        build(agent_r_recipe(root), progress=False)
        export(str(root), "lm@1", "sft", str(root / "exports" / "lm-sft"))
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return root
