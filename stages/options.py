"""Base of every typed options model (a stage's config lives beside the stage; engines and task sources too)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Options(BaseModel):
    """Unknown keys are errors; assignments are validated (so `--set` overrides are checked too)."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NoOptions(Options):
    """A stage without settings."""
