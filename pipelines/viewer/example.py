"""One row shaped for showing it as the model saw it, from whatever the row has (no method is named here):

- the problem (the row's `problem_id` -> problems: question or env instruction);
- steps: the row's own `steps`, else those its judgement was shown, else its attempt's, else its `solution` split
  as a judge would see it (stages.steps.split_solution); the first wrong step (the row's `first_error_step`, else
  its judgement's) is marked with the error type and the judge's raw text; every verdict about the row from any
  table (judgements, a critique method's rows) is put beside the step it names;
- segments ({text, author, loss}) or messages ({role, content, loss}) with the loss mask, the transition or
  revision signal (template-authored segment, `revision_turn_index`) and the splice point (where the model's own
  text ends / the revision turn starts);
- for rows of a search tree (`tree_id` and a nodes table): the tree around the good and bad paths.
"""
from __future__ import annotations

from typing import Any, Optional

from pipelines.viewer.data import ViewerData
from schemas.manifest import Manifest

BIG = ("steps", "segments", "messages")
BAD = {"error", "wrong", "bad", "incorrect"}
STEP_COLUMNS = ("step", "step_idx", "step_index", "first_error_step", "first_wrong_step")


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, (list, dict))


def _by_table(parents: list[dict], table: str) -> Optional[dict]:
    return next((p["row"] for p in parents if p["table"] == table and p["row"] is not None), None)


def step_verdicts(r: dict) -> list[dict]:
    """Per-step verdicts a row carries: items of any list column that have an `idx` and a `verdict` (a
    critique's step labels, a judge's per-step view)."""
    out = []
    for v in r.values():
        if isinstance(v, list) and v and isinstance(v[0], dict) and "idx" in v[0] and "verdict" in v[0]:
            out += [x for x in v if x.get("verdict") not in (None, "none")]
    return out


def _step_view(s: dict) -> dict:
    text = s.get("text") if s.get("text") is not None else s.get("raw_text", "")
    extra = {k: v for k, v in s.items() if k not in ("idx", "text", "raw_text") and v not in (None, "", False)}
    return {"idx": s.get("idx"), "text": text, "extra": extra, "notes": [], "mark": ""}


def shape(data: ViewerData, m: Manifest, table: str, row: dict[str, Any]) -> dict[str, Any]:
    idc = data.id_column(m, table)
    parents = data.parents(m, table, row)
    children = data.children(m, str(row[idc]))
    view: dict[str, Any] = {"table": table, "id": row[idc], "id_column": idc, "parents": parents,
                            "children": children, "exports": data.export_rows(m, str(row[idc]))}
    view["fields"] = {k: v for k, v in row.items() if _is_scalar(v) and k not in BIG}
    view["lists"] = {k: v for k, v in row.items() if not _is_scalar(v) and k not in BIG and v}

    problem = row if table == "problems" else _by_table(parents, "problems")
    if problem is not None:
        view["problem"] = {"id": problem.get("problem_id"), "text": problem.get("question") or "",
                           "reference": problem.get("reference_answer") or problem.get("reference_solution")}
    elif row.get("instruction"):
        view["problem"] = {"id": row.get("problem_id"), "text": row["instruction"], "reference": None}

    # the judgement that located the error: the row itself, the one it names, or one about it
    judgement = row if row.get("raw_text") is not None and "verdict" in row else None
    judgement = judgement or _by_table(parents, "judgements")
    about = [c for c in children if c["row"].get("verdict") is not None or c["row"].get("final_verdict") is not None
             or step_verdicts(c["row"])]
    if judgement is None:
        judgement = next((c["row"] for c in about if c["row"].get("first_error_step") is not None), None)

    # steps
    source, steps = None, []
    others = [(f"its {p['table']} row {p['id']}", p["row"]) for p in parents if p["row"] is not None]
    for label, r in (("this row", row), ("the judgement it names", _by_table(parents, "judgements")),
                     ("its attempt", _by_table(parents, "attempts")), *others,
                     ("the judgement about it", judgement)):
        if r is not None and isinstance(r.get("steps"), list) and r["steps"]:
            source, steps = label, [_step_view(s) for s in r["steps"]]
            break
    if not steps:
        text_row = next((r for r in (row, _by_table(parents, "injections")) if r and r.get("solution")), None)
        if text_row is not None:
            from stages.steps import step_rows
            source, steps = "its solution, split as a judge sees it", [_step_view(s) for s in
                                                                        step_rows(text_row["solution"])]
    first = row.get("first_error_step") if row.get("first_error_step") is not None else row.get("first_wrong_step")
    if first is None and judgement is not None:
        first = judgement.get("first_error_step")
    if first is None:      # a row whose steps carry verdicts (STeP): the first one judged wrong
        first = min((s["idx"] for s in step_verdicts(row) if str(s["verdict"]).lower() in BAD), default=None)
    error_type = row.get("error_type") or (judgement or {}).get("error_type")
    view["first_error"] = None
    if first is not None or error_type:
        view["first_error"] = {"step": first, "error_type": error_type,
                               "judge_raw": (judgement or {}).get("raw_text"),
                               "verdict": (judgement or {}).get("verdict"),
                               "judgement_id": (judgement or {}).get("judgement_id"),
                               "source": row.get("first_error_source") or ("judgement" if judgement else None)}
    for s in steps:
        if first is not None and s["idx"] == first:
            s["mark"] = "error"
        elif first is not None and s["idx"] is not None and s["idx"] < first:
            s["mark"] = "before"
    # verdicts beside steps: every row about this one that names a step, or the judge's per-step view
    by_idx = {s["idx"]: s for s in steps}
    for c in about:
        r = c["row"]
        who = f"{c['table']} {c['id']}"
        if step_verdicts(r):       # its own per-step labels say more than its first wrong step (below)
            continue
        col = next((k for k in STEP_COLUMNS if r.get(k) is not None), None)
        if col is not None and r[col] in by_idx:
            by_idx[r[col]]["notes"].append({"who": who, "verdict": r.get("verdict"), "error_type": r.get("error_type"),
                                            "text": r.get("raw_text") or r.get("critique") or ""})
            if col in ("first_error_step", "first_wrong_step"):   # the steps before it were judged fine
                for k, s in by_idx.items():
                    if k is not None and k < r[col]:
                        s["notes"].append({"who": who, "verdict": "ok (before the first error)",
                                           "error_type": None, "text": ""})
        elif r.get("verdict") is not None or r.get("final_verdict") is not None:
            view.setdefault("verdicts", []).append({"who": who, "verdict": r.get("verdict", r.get("final_verdict")),
                                                    "text": r.get("raw_text") or ""})
    # per-step verdicts (a critique's step labels): the row's own, and those of every row about it
    for who, r in [("this row", row), *[(f"{c['table']} {c['id']}", c["row"]) for c in about]]:
        for s in step_verdicts(r):
            if s.get("idx") in by_idx:
                by_idx[s["idx"]]["notes"].append({"who": who, "verdict": s["verdict"], "error_type": s.get("error_type"),
                                                  "text": s.get("explanation") or s.get("reason") or ""})
    view["steps"], view["steps_source"] = steps, source

    # segments / messages with the loss mask, the signal and the splice point
    signal = row.get("transition") or row.get("revision_signal")
    view["signal"] = signal
    segs = row.get("segments") or []
    msgs = row.get("messages") or []
    if segs and not msgs:      # a conversation's messages carry the same text, turn by turn
        out, seen_model, spliced = [], False, False
        for s in segs:
            author = s.get("author")
            splice = seen_model and author != "model" and not spliced
            spliced = spliced or splice
            seen_model = seen_model or author == "model"
            out.append({"text": s.get("text", ""), "author": author, "loss": bool(s.get("loss")),
                        "signal": author == "template" or bool(signal and s.get("text", "").strip() == signal.strip()),
                        "splice_before": splice})
        view["segments"] = out
    if msgs:
        turn = row.get("revision_turn_index")
        prefix = row.get("prefix_len")
        # an agent trajectory's action at depth d is its d-th assistant turn after the opening (instruction,
        # "OK", first observation)
        opening = 3 if len(msgs) > 2 and msgs[0].get("role") == "user" and msgs[1].get("role") == "assistant" else 1
        at_depth = {d: opening + 2 * (d - 1) for d in range(1, len(msgs))}
        marks: dict[int, list[str]] = {}
        for col, label in (("first_error_depth", "first error (judged)"), ("bad_end_depth", "last bad step kept")):
            if row.get(col):
                marks.setdefault(at_depth[row[col]], []).append(f"{label}, depth {row[col]}")
        out = []
        for i, mm in enumerate(msgs):
            part = ("opening" if i < opening else "shared prefix" if prefix is None or i < prefix else
                    "bad branch" if turn is not None and i < turn else "revision turn" if i == turn else
                    "good branch" if turn is not None else "")
            parts = [{"text": x.get("text", ""), "loss": bool(x.get("loss")), "author": x.get("author")}
                     for x in segs if x.get("message") == i] if segs and "message" in segs[0] else []
            out.append({"i": i, "role": mm.get("role"), "content": mm.get("content", ""), "loss": bool(mm.get("loss")),
                        "segments": parts,
                        "revision_turn": turn == i, "splice_before": turn == i, "part": part,
                        "prefix_end": prefix is not None and i == prefix - 1, "marks": marks.get(i, []),
                        "error": any(x.startswith("first error") for x in marks.get(i, []))})
        view["messages"] = out
        if row.get("first_error_depth") and not view["first_error"]:
            # the judgement of the first-error node (a tree row's pair names the node)
            node = row.get("first_error_node_id") or (_by_table(parents, "pairs") or {}).get("first_error_node_id")
            j = next((c["row"] for c in (data.children(m, node) if node else [])
                      if c["row"].get("verdict") is not None), {})
            view["first_error"] = {"step": row["first_error_depth"], "error_type": j.get("error_type"),
                                   "judge_raw": j.get("raw_text"), "verdict": j.get("verdict") or row.get("judge_status"),
                                   "judgement_id": j.get("judgement_id"), "source": f"depth (node {node})"}
    view["tree"] = tree_view(data, m, row, parents)
    return view


def tree_view(data: ViewerData, m: Manifest, row: dict, parents: list[dict]) -> Optional[dict]:
    """The search tree around the spliced paths: every node on the good and bad paths, their siblings, and the
    count of the rest; marks for the divergence parent, the first error and the end of the bad part."""
    tree_id = row.get("tree_id")
    if not tree_id:
        return None
    nodes = data.tree_nodes(m, tree_id)
    if not nodes:
        return None
    pair = _by_table(parents, "pairs") or {}
    pick = {k: row.get(k) or pair.get(k) for k in ("good_leaf_id", "bad_leaf_id", "divergence_node_id",
                                                    "first_error_node_id", "bad_end_node_id")}
    if row.get("node_id"):
        pick.setdefault("selected", row["node_id"])
        pick["selected"] = row["node_id"]
    by_id = {n["node_id"]: n for n in nodes}

    def path(leaf: Optional[str]) -> list[str]:
        out = []
        while leaf and leaf in by_id:
            out.append(leaf)
            leaf = by_id[leaf]["parent_id"]
        return out[::-1]
    good, bad = set(path(pick["good_leaf_id"])), set(path(pick["bad_leaf_id"]))
    if pick.get("selected"):
        bad |= set(path(pick["selected"]))
    on_path = good | bad
    kids: dict[Optional[str], list[dict]] = {}
    for n in nodes:
        kids.setdefault(n["parent_id"], []).append(n)

    def build(n: dict) -> dict:
        show = [c for c in kids.get(n["node_id"], []) if c["node_id"] in on_path or n["node_id"] in on_path]
        hidden = len(kids.get(n["node_id"], [])) - len(show)
        marks = [k.replace("_id", "").replace("_", " ") for k, v in pick.items() if v == n["node_id"]]
        return {"id": n["node_id"], "depth": n["depth"], "action": n.get("action") or n.get("executed_action"),
                "raw_text": n.get("raw_text") or "", "observation": n.get("observation") or "",
                "value": round(n.get("mean_value") or 0.0, 3), "visits": n.get("visits"),
                "terminal": n.get("terminal_reason"), "good": n["node_id"] in good, "bad": n["node_id"] in bad,
                "marks": marks, "children": [build(c) for c in show] if n["node_id"] in on_path else [],
                "hidden": hidden if n["node_id"] in on_path else len(kids.get(n["node_id"], []))}
    roots = kids.get(None, [])
    return {"tree_id": tree_id, "nodes": len(nodes), "root": build(roots[0]) if roots else None}
