"""Versioned Parquet storage: immutable version directories, a manifest written last, resumable staging shards.

Layout under the root (a directory or an fsspec URL):

    datasets/<name>/v0001/<table>/part-s00000.parquet   one file per shard and table
    datasets/<name>/v0001/manifest.json                  written last: the version exists once it is there
    staging/<name>/<build_key>/build.json                the build being run (run id, config, claimed version)
    staging/<name>/<build_key>/shards/s00000/...         shard tables + stats.json, then _SUCCESS last
    staging/<name>/<build_key>/shards/s00000/after-<stage>.pkl   a shard's rows after one stage (stage-by-stage
                                                         builds; replaces the previous stage's file)

Rules: a published version is never modified; readers only see versions that have a manifest; a version number
is claimed with an atomic mkdir, so two builds never take the same number; staging is deleted only after the
manifest is written, so a crash at any point loses nothing already written.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import pickle
import re
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from schemas.errors import VersionNotFound
from schemas.manifest import FileEntry, Manifest, TableEntry

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
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


@dataclass
class ShardResult:
    shard_id: int
    tables: dict[str, dict[str, Any]]       # table -> {"path", "rows", "bytes", "sha256"}
    stats: dict[str, dict[str, Any]]        # stage -> counts


class Store:
    """A storage root. All paths below are relative to it."""

    def __init__(self, root: str):
        self.root_url = root
        self.fs, path = fsspec.core.url_to_fs(root)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(path) if self.local else path.rstrip("/")

    # --- paths --------------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """A path other tools (DuckDB, datasets, Ray) can open."""
        p = self.path(*parts)
        return p if self.local else self.fs.unstrip_protocol(p)

    @property
    def models_dir(self) -> str:
        """Where prepared models live: $ERRATA_MODELS, else <root>/models."""
        return os.environ.get("ERRATA_MODELS") or self.path("models")

    # --- small file helpers -------------------------------------------------------------------------------
    def write_bytes_atomic(self, path: str, blob: bytes) -> None:
        """Write a whole file so readers see the old state or the new one, never a part."""
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:  # one PUT of the whole object is atomic on object stores
            self.fs.pipe_file(path, blob)

    def write_json_atomic(self, path: str, data: Any) -> None:
        self.write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "rb") as f:
            return json.loads(f.read())

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def write_parquet(self, path: str, table: pa.Table) -> dict[str, Any]:
        """Write a table; return {path, rows, bytes, sha256}. Written via a temp name, then renamed."""
        buf = io.BytesIO()
        if table.num_rows:
            pq.write_table(table, buf, compression="zstd")
        else:  # no row group at all: `datasets` skips such a file, while a 0-row group makes it fail
            pq.ParquetWriter(buf, table.schema, compression="zstd").close()
        blob = buf.getvalue()
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, blob)
        return {"path": path, "rows": table.num_rows, "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest()}

    # --- staging ------------------------------------------------------------------------------------------
    def staging_dir(self, dataset: str, build_key: str) -> str:
        return self.path("staging", dataset, build_key)

    def open_build(self, dataset: str, build_key: str, config: dict) -> tuple[dict, bool]:
        """Start or resume a build. Returns (build record, resumed?)."""
        d = self.staging_dir(dataset, build_key)
        bj = f"{d}/build.json"
        if self.exists(bj):
            rec = self.read_json(bj)
            rec["resumes"] = rec.get("resumes", 0) + 1
            self.write_json_atomic(bj, rec)
            return rec, True
        rec = {"run_id": f"run-{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
               "dataset": dataset, "build_key": build_key, "config": config, "resumes": 0,
               "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}
        self.write_json_atomic(bj, rec)
        return rec, False

    def shard_dir(self, dataset: str, build_key: str, shard_id: int) -> str:
        return f"{self.staging_dir(dataset, build_key)}/shards/s{shard_id:05d}"

    def shard_done(self, dataset: str, build_key: str, shard_id: int) -> bool:
        return self.exists(f"{self.shard_dir(dataset, build_key, shard_id)}/{SUCCESS}")

    def write_shard(self, dataset: str, build_key: str, shard_id: int, tables: dict[str, pa.Table],
                    stats: dict[str, dict]) -> ShardResult:
        """Write one shard's tables and stats, then its completion marker (last)."""
        d = self.shard_dir(dataset, build_key, shard_id)
        files = {name: self.write_parquet(f"{d}/{name}.parquet", t) for name, t in tables.items()}
        result = {"shard_id": shard_id, "tables": files, "stats": stats}
        self.write_json_atomic(f"{d}/stats.json", result)
        self.write_json_atomic(f"{d}/{SUCCESS}", {"shard_id": shard_id})
        return ShardResult(shard_id, files, stats)

    # --- per-stage checkpoints (stage-by-stage builds) ---------------------------------------------------
    def checkpoint_path(self, dataset: str, build_key: str, shard_id: int, stage: str) -> str:
        return f"{self.shard_dir(dataset, build_key, shard_id)}/after-{stage}.pkl"

    def write_checkpoint(self, dataset: str, build_key: str, shard_id: int, stage: str, shard: dict,
                         previous: str | None = None) -> None:
        """Record a shard's rows after `stage` (written whole under a temp name, then renamed, so the file
        existing means the stage finished the shard), then delete the previous stage's checkpoint."""
        self.write_bytes_atomic(self.checkpoint_path(dataset, build_key, shard_id, stage),
                                pickle.dumps(shard, protocol=5))
        if previous:
            self.drop_checkpoint(dataset, build_key, shard_id, previous)

    def read_checkpoint(self, dataset: str, build_key: str, shard_id: int, stage: str) -> dict:
        with self.fs.open(self.checkpoint_path(dataset, build_key, shard_id, stage), "rb") as f:
            return pickle.loads(f.read())

    def drop_checkpoint(self, dataset: str, build_key: str, shard_id: int, stage: str) -> None:
        path = self.checkpoint_path(dataset, build_key, shard_id, stage)
        if self.exists(path):
            self.fs.rm(path)

    def last_checkpoint(self, dataset: str, build_key: str, shard_id: int, stages: list[str]) -> int:
        """Index in `stages` of the latest stage that finished this shard; -1 if none did."""
        for i in range(len(stages) - 1, -1, -1):
            if self.exists(self.checkpoint_path(dataset, build_key, shard_id, stages[i])):
                return i
        return -1

    def read_shard(self, dataset: str, build_key: str, shard_id: int) -> ShardResult:
        r = self.read_json(f"{self.shard_dir(dataset, build_key, shard_id)}/stats.json")
        return ShardResult(r["shard_id"], r["tables"], r["stats"])

    def drop_staging(self, dataset: str, build_key: str) -> None:
        d = self.staging_dir(dataset, build_key)
        if self.exists(d):
            self.fs.rm(d, recursive=True)

    # --- versions -----------------------------------------------------------------------------------------
    def dataset_dir(self, dataset: str) -> str:
        return self.path("datasets", dataset)

    def version_dir(self, dataset: str, version: int) -> str:
        return f"{self.dataset_dir(dataset)}/v{version:04d}"

    def _version_numbers(self, dataset: str) -> list[int]:
        d = self.dataset_dir(dataset)
        if not self.exists(d):
            return []
        out = []
        for p in self.fs.ls(d, detail=False):
            m = _VERSION_RE.match(p.rstrip("/").rsplit("/", 1)[-1])
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def datasets(self) -> list[str]:
        d = self.path("datasets")
        if not self.exists(d):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(d, detail=False)
                      if self.fs.isdir(p) and self.versions(p.rstrip("/").rsplit("/", 1)[-1]))

    def versions(self, dataset: str) -> list[int]:
        """Published versions (those with a manifest), ascending."""
        return [v for v in self._version_numbers(dataset)
                if self.exists(f"{self.version_dir(dataset, v)}/{MANIFEST}")]

    def manifest(self, dataset: str, version: int | None = None) -> Manifest:
        vs = self.versions(dataset)
        if not vs:
            raise VersionNotFound(f"no published version of dataset '{dataset}' under {self.root_url}")
        v = vs[-1] if version is None else version
        if v not in vs:
            raise VersionNotFound(f"dataset '{dataset}' has no version {v} (published: {vs})")
        return Manifest.model_validate(self.read_json(f"{self.version_dir(dataset, v)}/{MANIFEST}"))

    def resolve(self, ref: str) -> Manifest:
        name, v = parse_ref(ref)
        return self.manifest(name, v)

    def table_files(self, m: Manifest, table: str) -> list[str]:
        if table not in m.tables:
            raise VersionNotFound(f"{m.ref} has no table '{table}' (tables: {', '.join(m.tables)})")
        base = self.version_dir(m.dataset, m.version)
        return [self.url(base[len(self.root) + 1:], f.path) for f in m.tables[table].files]

    def read_table(self, m: Manifest, table: str) -> pa.Table:
        if table not in m.tables:
            raise VersionNotFound(f"{m.ref} has no table '{table}' (tables: {', '.join(m.tables)})")
        base = self.version_dir(m.dataset, m.version)
        return pa.concat_tables([pq.read_table(f"{base}/{f.path}", filesystem=None if self.local else self.fs)
                                 for f in m.tables[table].files])

    def _claim_version(self, dataset: str) -> int:
        """Atomically take the next free version number (mkdir fails if another build took it)."""
        existing = self._version_numbers(dataset)
        v = (existing[-1] if existing else 0) + 1
        while True:
            d = self.version_dir(dataset, v)
            try:
                if self.local:
                    os.makedirs(self.dataset_dir(dataset), exist_ok=True)
                    os.mkdir(d)
                else:
                    if self.fs.exists(d):
                        raise FileExistsError(d)
                    self.fs.mkdir(d)
                return v
            except FileExistsError:
                v += 1

    def publish(self, dataset: str, build_key: str, shards: list[ShardResult], manifest_fields: dict) -> Manifest:
        """Publish finished staging shards as a new version. Idempotent across crashes: the claimed version is
        recorded in build.json and reused (emptied) by a rerun; staging goes only after the manifest is written."""
        sdir = self.staging_dir(dataset, build_key)
        bj = f"{sdir}/build.json"
        rec = self.read_json(bj)
        version = rec.get("claimed_version")
        if version is not None:
            vdir = self.version_dir(dataset, version)
            if self.exists(f"{vdir}/{MANIFEST}"):  # published before a crash removed staging: done
                return self.manifest(dataset, version)
            if self.exists(vdir):
                self.fs.rm(vdir, recursive=True)
            self.fs.mkdir(vdir) if not self.local else os.makedirs(vdir)
        else:
            version = self._claim_version(dataset)
            rec["claimed_version"] = version
            self.write_json_atomic(bj, rec)
        vdir = self.version_dir(dataset, version)
        tables: dict[str, TableEntry] = {}
        for sh in sorted(shards, key=lambda s: s.shard_id):
            for tname, f in sh.tables.items():
                rel = f"{tname}/part-s{sh.shard_id:05d}.parquet"
                dst = f"{vdir}/{rel}"
                self._link_or_copy(f["path"], dst)
                t = tables.setdefault(tname, TableEntry(rows=0))
                t.rows += f["rows"]
                t.files.append(FileEntry(path=rel, rows=f["rows"], bytes=f["bytes"], sha256=f["sha256"]))
        m = Manifest(dataset=dataset, version=version, tables=tables,
                     created_at=dt.datetime.now(dt.timezone.utc).isoformat(), **manifest_fields)
        self.write_json_atomic(f"{vdir}/{MANIFEST}", m.model_dump(mode="json"))
        self.drop_staging(dataset, build_key)
        return m

    def _link_or_copy(self, src: str, dst: str) -> None:
        if self.local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                import shutil
                shutil.copyfile(src, dst)
        else:
            self.fs.copy(src, dst)

    def verify_version(self, m: Manifest) -> list[str]:
        """Re-hash every file of a version; return the problems found (empty = intact)."""
        problems = []
        base = self.version_dir(m.dataset, m.version)
        for tname, t in m.tables.items():
            for f in t.files:
                p = f"{base}/{f.path}"
                if not self.exists(p):
                    problems.append(f"missing {p}")
                    continue
                with self.fs.open(p, "rb") as fh:
                    h = hashlib.sha256(fh.read()).hexdigest()
                if h != f.sha256:
                    problems.append(f"checksum mismatch {p}")
        return problems
