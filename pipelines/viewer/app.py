"""The viewer's web app (FastAPI + Jinja2): datasets and versions, each version's dataset card, a table's rows with
filters and keyset paging, one example as the model saw it, and diffs between versions.

Bound to 127.0.0.1 by default; then a request from any other address, or with a Host header that does not name
this machine (DNS rebinding), is refused with 403. Every read goes through `errata sql`'s read-only connection
(pipelines/viewer/data.py); plot images are served only from a version's plots/ folder, by plain file name.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates

from pipelines.sql import SQLError
from pipelines.viewer.data import FILTERS, ViewerData
from schemas.errors import ErrataError, VersionNotFound

TEMPLATES = Path(__file__).parent / "templates"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
HIDDEN = {"run_id", "created_at", "method", "prompt", "sampling_json"}
PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(png|svg)$")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host in ("localhost",)


def _host_name(header: str) -> str:
    """The host part of a Host header ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '[::1]')."""
    if header.startswith("["):
        return header[:header.find("]") + 1]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _markdown(text: str) -> tuple[str, str]:
    """(YAML header, HTML body) of a dataset card."""
    from markdown_it import MarkdownIt
    header = ""
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end > 0:
            header, text = text[4:end], text[end + 5:]
    return header, MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _cell(v: Any, n: int = 120) -> str:
    if v is None:
        return ""
    s = json.dumps(v, default=str, ensure_ascii=False) if isinstance(v, (list, dict)) else str(v)
    return s if len(s) <= n else s[:n] + "..."


def create_app(data_root: str, local_only: bool = True) -> FastAPI:
    data = ViewerData(data_root)
    app = FastAPI(title="errata viewer", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters["cell"] = _cell
    templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=1, default=str, ensure_ascii=False)
    app.state.data = data

    @app.middleware("http")
    async def only_this_machine(request: Request, call_next):
        if local_only:
            client = request.client.host if request.client else ""
            host = _host_name(request.headers.get("host", ""))
            if not is_loopback(client):
                who = client or "an unknown address"
                return PlainTextResponse(f"refused: the viewer is bound to localhost and {who} is not this machine",
                                         status_code=403)
            if host not in LOCAL_HOSTS:
                return PlainTextResponse(f"refused: Host '{host}' is not this machine (the viewer is bound to "
                                         "localhost)", status_code=403)
        return await call_next(request)

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"datasets": data.datasets(), **ctx}, status_code=status)

    @app.exception_handler(ErrataError)
    async def errata_error(request: Request, exc: ErrataError):
        status = 404 if isinstance(exc, VersionNotFound) else 400
        return page(request, "error.html", status, error=str(exc), kind=type(exc).__name__)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        return page(request, "index.html")

    @app.get("/d/{dataset}/{version}/", response_class=HTMLResponse)
    def version_page(request: Request, dataset: str, version: int):
        m = data.manifest(dataset, version)
        text, plots, written = data.card(m)
        header, body = _markdown(text)
        previous = [v for v in data.catalog.versions(dataset) if v < version]
        return page(request, "version.html", m=m, card_header=header, card_html=body, card_written=written,
                    plots=plots, previous=previous[-1] if previous else None)

    @app.get("/d/{dataset}/{version}/plots/{name}")
    def plot(dataset: str, version: int, name: str):
        m = data.manifest(dataset, version)
        if not PLOT_NAME.match(name):
            return PlainTextResponse("refused: not a plot file name", status_code=400)
        root = data.catalog.root
        path = f"{data.catalog.version_dir(m.dataset, m.version)}/plots/{name}"
        if not root.exists(path):
            return PlainTextResponse("no such plot", status_code=404)
        with root.fs.open(path, "rb") as f:
            blob = f.read()
        return Response(blob, media_type="image/png" if name.endswith(".png") else "image/svg+xml")

    @app.get("/d/{dataset}/{version}/t/{table}", response_class=HTMLResponse)
    def table_page(request: Request, dataset: str, version: int, table: str, after: Optional[str] = None,
                   order: str = "file"):
        m = data.manifest(dataset, version)
        names = [*FILTERS, "q", "where"]
        filters = {k: request.query_params.get(k, "") for k in names if request.query_params.get(k)}
        options = data.filter_options(m, table)
        error = None
        try:
            pg = data.page(m, table, filters, order=order, after=after if order == "id" else None,
                           offset=int(after) if order == "file" and (after or "").isdigit() else 0)
        except SQLError as e:
            pg, error = None, str(e)
        from urllib.parse import urlencode
        types = data.columns(m, table)
        shown = []
        if pg is not None:      # the id first, then the scalar columns (lists and structs are on the row's page)
            shown = [pg.id_column] + [c for c, t in types.items() if c != pg.id_column and c not in HIDDEN
                                      and "[]" not in t and not t.startswith(("STRUCT", "MAP"))]
        return page(request, "table.html", 400 if error else 200, m=m, table=table, pg=pg, options=options,
                    shown=shown, filters=filters, error=error,
                    order=order,
                    next_qs=urlencode({**filters, "order": order, "after": pg.next_after}) if pg and pg.next_after
                    else None)

    @app.get("/d/{dataset}/{version}/t/{table}/r/{row_id}", response_class=HTMLResponse)
    def row_page(request: Request, dataset: str, version: int, table: str, row_id: str):
        from pipelines.viewer.example import shape
        m = data.manifest(dataset, version)
        row = data.row(m, table, row_id)
        if row is None:
            raise VersionNotFound(f"{m.ref} has no row with {data.id_column(m, table)} = '{row_id}' in {table}")
        return page(request, "row.html", m=m, table=table, v=shape(data, m, table, row))

    @app.get("/id/{dataset}/{version}/{row_id}")
    def by_id(request: Request, dataset: str, version: int, row_id: str):
        """A lineage link: the row with this id, whichever table holds it."""
        from fastapi.responses import RedirectResponse
        m = data.manifest(dataset, version)
        hit = data.find(m, row_id)
        if hit is None:
            raise VersionNotFound(f"{m.ref} has no row with id '{row_id}'")
        return RedirectResponse(f"/d/{dataset}/{version}/t/{hit[0]}/r/{row_id}")

    @app.get("/diff", response_class=HTMLResponse)
    def diff_page(request: Request, a: str = "", b: str = ""):
        from pipelines.diff import diff_versions, render
        d = diff_versions(data.catalog, a, b) if a and b else None
        return page(request, "diff.html", a=a, b=b, d=d, text=render(d) if d else "")

    return app
