"""An export as a Prefect flow, so that exports can be scheduled ("the latest demo as DPO every Monday").

Each run exports one version into its own directory `<out>/<dataset>-v<NNNN>-<format>/`. A version already
exported there is skipped (the run completes and says so), so a schedule that fires while no new version
appeared does nothing and never overwrites an earlier export.
"""
from __future__ import annotations

from flows._env import prefect_env

prefect_env()

import logging  # noqa: E402
import os  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Optional  # noqa: E402

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows._env import shorten_errata_tracebacks  # noqa: E402
from flows.lost_runs import record_this_process  # noqa: E402
from flows.tags import add_tags  # noqa: E402

from pipelines.catalog import Catalog  # noqa: E402
from pipelines.config import data_root  # noqa: E402
from pipelines.export import export, export_for  # noqa: E402

EXPORT_FLOW_NAME = "errata-export"

shorten_errata_tracebacks()


@dataclass
class ExportRunResult:
    source: str
    format: str
    out_dir: str
    rows: int
    files: list[str]
    skipped: bool


def export_dir(out: str, dataset: str, version: int, fmt: str) -> str:
    return os.path.join(out, f"{dataset}-v{version:04d}-{fmt}")


@task(name="export", cache_policy=NO_CACHE, persist_result=False)
def export_task(root: str, ref: str, fmt: str, out: str, jsonl: bool, max_pairs: int) -> ExportRunResult:
    m = Catalog(root).resolve(ref)
    export_for(m, fmt)   # an unknown format for this version fails before anything is written
    d = export_dir(out, m.dataset, m.version, fmt)
    if os.path.exists(os.path.join(d, "train-00000-of-00001.parquet")):
        return ExportRunResult(m.ref, fmt, d, 0, [], True)
    r = export(root, m.ref, fmt, d, jsonl=jsonl, options={"max_pairs_per_problem": max_pairs})
    return ExportRunResult(r.source, r.format, d, r.rows, r.files, False)


def _run_name() -> str:
    from prefect.runtime import flow_run
    p = flow_run.parameters or {}
    return f"export-{p.get('ref', '?')}-{p.get('format', '?')}".replace("@", "-v")


@flow(name=EXPORT_FLOW_NAME, flow_run_name=_run_name, log_prints=False, persist_result=False,
      description="errata export: a dataset version as an SFT/DPO corpus in TRL's column conventions")
def export_flow(ref: str, format: str, out: str, jsonl: bool = False, max_pairs: int = 1,
                data: Optional[str] = None) -> ExportRunResult:
    """Export `ref` (DATASET for the latest version, or DATASET@N) as `format` under `out`."""
    record_this_process(log=logging.getLogger("errata.export").warning)
    r = export_task(data or data_root(), ref, format, os.path.abspath(out), jsonl, max_pairs)
    add_tags([f"dataset:{r.source.split('@')[0]}", f"source:{r.source}", f"export:{format}"])
    if r.skipped:
        md = f"# {r.source} {format}\n\nAlready exported to `{r.out_dir}`: nothing to do."
    else:
        md = (f"# {r.source} {format}\n\n{r.rows} rows in `{r.out_dir}`.\n\n"
              + "\n".join(f"- `{f}`" for f in r.files)
              + f"\n\nLoad: `datasets.load_dataset(\"parquet\", data_files=\"{r.out_dir}/*.parquet\")`")
    create_markdown_artifact(key=f"export-{r.source.split('@')[0].replace('_', '-')}-{format}", markdown=md,
                             description=f"errata export {r.source} {format}")
    return r
