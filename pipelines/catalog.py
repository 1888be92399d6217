"""The catalogue of published versions: immutable directories of Parquet files, each with a manifest written last.

    datasets/<name>/v0001/<table>/part-s00000.parquet   one file per shard and table
    datasets/<name>/v0001/manifest.json                  the version exists once this is there

Rules: a published version is never modified; readers only see versions that have a manifest; a version number is
claimed with an atomic mkdir, so two builds never take the same number.
"""
from __future__ import annotations

import re

import pyarrow as pa

from pipelines.files import Root
from schemas.errors import VersionNotFound
from schemas.manifest import Manifest

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d{4,})$")


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'demo' -> ('demo', None); 'demo@3' / 'demo@v3' -> ('demo', 3)."""
    name, _, ver = ref.partition("@")
    if not ver:
        return name, None
    try:
        return name, int(ver.lstrip("v"))
    except ValueError:
        raise VersionNotFound(f"bad version in '{ref}': expected NAME@N") from None


class Catalog:
    """Published versions under a root."""

    def __init__(self, root: Root | str):
        self.root = root if isinstance(root, Root) else Root(root)

    def dataset_dir(self, dataset: str) -> str:
        return self.root.path("datasets", dataset)

    def version_dir(self, dataset: str, version: int) -> str:
        return f"{self.dataset_dir(dataset)}/v{version:04d}"

    def version_numbers(self, dataset: str) -> list[int]:
        """Every version directory, published or only claimed."""
        return sorted(int(m.group(1)) for n in self.root.ls_names(self.dataset_dir(dataset))
                      if (m := _VERSION_RE.match(n)))

    def versions(self, dataset: str) -> list[int]:
        """Published versions (those with a manifest), ascending."""
        return [v for v in self.version_numbers(dataset)
                if self.root.exists(f"{self.version_dir(dataset, v)}/{MANIFEST}")]

    def datasets(self) -> list[str]:
        return [n for n in self.root.ls_names(self.root.path("datasets")) if self.versions(n)]

    def manifest(self, dataset: str, version: int | None = None) -> Manifest:
        vs = self.versions(dataset)
        if not vs:
            raise VersionNotFound(f"no published version of dataset '{dataset}' under {self.root.root_url}")
        v = vs[-1] if version is None else version
        if v not in vs:
            raise VersionNotFound(f"dataset '{dataset}' has no version {v} (published: {vs})")
        return Manifest.model_validate(self.root.read_json(f"{self.version_dir(dataset, v)}/{MANIFEST}"))

    def resolve(self, ref: str) -> Manifest:
        name, v = parse_ref(ref)
        return self.manifest(name, v)

    def _need(self, m: Manifest, table: str) -> None:
        if table not in m.tables:
            raise VersionNotFound(f"{m.ref} has no table '{table}' (tables: {', '.join(m.tables)})")

    def table_files(self, m: Manifest, table: str) -> list[str]:
        self._need(m, table)
        base = self.version_dir(m.dataset, m.version)
        return [self.root.url(f"{base}/{f.path}") for f in m.tables[table].files]

    def read_table(self, m: Manifest, table: str, columns: list[str] | None = None) -> pa.Table:
        self._need(m, table)
        base = self.version_dir(m.dataset, m.version)
        return pa.concat_tables([self.root.read_parquet(f"{base}/{f.path}", columns=columns)
                                 for f in m.tables[table].files])

    def verify_version(self, m: Manifest) -> list[str]:
        """Re-hash every file of a version; return the problems found (empty = intact)."""
        problems = []
        base = self.version_dir(m.dataset, m.version)
        for t in m.tables.values():
            for f in t.files:
                p = f"{base}/{f.path}"
                if not self.root.exists(p):
                    problems.append(f"missing {p}")
                elif self.root.sha256(p) != f.sha256:
                    problems.append(f"checksum mismatch {p}")
        return problems

    def claim_version(self, dataset: str) -> int:
        """Atomically take the next free version number (mkdir fails if another build took it)."""
        existing = self.version_numbers(dataset)
        v = (existing[-1] if existing else 0) + 1
        while True:
            d = self.version_dir(dataset, v)
            try:
                if self.root.local:
                    import os
                    os.makedirs(self.dataset_dir(dataset), exist_ok=True)
                    os.mkdir(d)
                else:
                    if self.root.exists(d):
                        raise FileExistsError(d)
                    self.root.fs.mkdir(d)
                return v
            except FileExistsError:
                v += 1
