"""Prompt templates: plain text files `<name>.txt` with `{field}` placeholders, under stages/prompts/ (the prompts
shared stages use) or a method's own `prompts/` folder (pipelines/methods/<method>/prompts/). Names are unique
across those folders.

A template's version is the first 8 hex chars of the sha256 of its text, so every attempt records exactly which
wording produced it (`name@version`).
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from schemas.errors import ConfigError
from schemas.registry import methods

PROMPTS_DIR = Path(__file__).parent / "prompts"


def prompt_files() -> dict[str, Path]:
    """Template name -> file, over stages/prompts/ and every registered method's prompts/ folder."""
    out: dict[str, Path] = {}
    dirs = [PROMPTS_DIR] + [Path(m.home) / "prompts" for m in methods().values() if m.home is not None]
    for d in dirs:
        for p in sorted(d.glob("*.txt")):
            if p.stem in out and out[p.stem] != p:
                raise ConfigError(f"prompt template '{p.stem}' is defined twice: {out[p.stem]} and {p}")
            out[p.stem] = p
    return out


def template_names() -> list[str]:
    return sorted(prompt_files())


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:8]

    @property
    def ref(self) -> str:
        """`name@version`, as recorded on attempt rows."""
        return f"{self.name}@{self.version}"

    @property
    def fields(self) -> list[str]:
        return sorted({f for _, f, _, _ in string.Formatter().parse(self.text) if f})

    def render(self, **values: str) -> str:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise ConfigError(f"prompt template '{self.name}' needs {missing}; got {sorted(values)}")
        return self.text.format(**values).strip()


@lru_cache(maxsize=None)
def load_template(name: str) -> PromptTemplate:
    """Load the template `name` (see prompt_files). Unknown names raise ConfigError listing the known ones."""
    path = prompt_files().get(name)
    if path is None:
        raise ConfigError(f"unknown prompt template '{name}' (known: {', '.join(template_names()) or 'none'})")
    return PromptTemplate(name=name, text=path.read_text())
