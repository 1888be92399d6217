"""Prompt templates: plain text files under stages/prompts/<name>.txt with `{field}` placeholders.

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

PROMPTS_DIR = Path(__file__).parent / "prompts"


def template_names() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))


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
    """Load stages/prompts/<name>.txt. Unknown names raise ConfigError listing the known ones."""
    path = PROMPTS_DIR / f"{name}.txt"
    if "/" in name or "\\" in name or not path.is_file():
        raise ConfigError(f"unknown prompt template '{name}' (known: {', '.join(template_names()) or 'none'})")
    return PromptTemplate(name=name, text=path.read_text())
