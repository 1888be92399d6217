"""A storage root (a directory or an fsspec URL) and the few file operations errata needs, every write atomic:
readers see the old file or the new one, never a part of it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


class Root:
    """A storage root. Paths are '/'-joined below it; `url()` gives what DuckDB, datasets and Ray can open."""

    def __init__(self, root: str):
        self.root_url = root
        self.fs, path = fsspec.core.url_to_fs(root)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(path) if self.local else path.rstrip("/")

    def __reduce__(self):   # pickles as its URL (into Ray actors, Prefect tasks)
        return (Root, (self.root_url if not self.local else self.root,))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    @property
    def models_dir(self) -> str:
        """Where prepared models live: $ERRATA_MODELS, else <root>/models."""
        return os.environ.get("ERRATA_MODELS") or self.path("models")

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def write_bytes_atomic(self, path: str, blob: bytes) -> None:
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

    def write_parquet(self, path: str, table: pa.Table) -> dict[str, Any]:
        """Write a table atomically; return {path, rows, bytes, sha256}."""
        buf = io.BytesIO()
        if table.num_rows:
            pq.write_table(table, buf, compression="zstd")
        else:  # no row group at all: `datasets` skips such a file, while a 0-row group makes it fail
            pq.ParquetWriter(buf, table.schema, compression="zstd").close()
        blob = buf.getvalue()
        self.write_bytes_atomic(path, blob)
        return {"path": path, "rows": table.num_rows, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=columns, filesystem=None if self.local else self.fs)

    def sha256(self, path: str) -> str:
        with self.fs.open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    def rm(self, path: str, recursive: bool = False) -> None:
        if self.exists(path):
            self.fs.rm(path, recursive=recursive)

    def ls_names(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def link_or_copy(self, src: str, dst: str) -> None:
        if self.local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        else:
            self.fs.copy(src, dst)
