"""One tree in, Agent-R's rows out: pair the leaves, walk each pair's bad path with the judge, splice.

    rows, counts = await tree_rows_for_training(tree, policy, wait_reply=lambda node: env_reply(env, tree, node,
                                                "wait"))

Pairs whose walk gives no splice (an unparsed judgement under on_unparsed="stop", a failed judge call) are
dropped and counted by walk status (`dropped_unparsed`, `dropped_judge_error`); a failing wait reply drops the
pair as `dropped_wait_reply_error`. `good` rows (every leaf path with value > alpha) come with them when
`good=True`. Walks of one tree run `concurrency` at a time; each node is judged once (StepJudge).
"""
from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from typing import Awaitable, Callable, Optional, Union

from stages.agents.judge import JudgeSettings, StepJudge, first_error_walk
from stages.agents.mcts import Node, Policy, Tree
from stages.agents.pairs import PairSettings, make_pairs
from stages.agents.splice import good_rows, revision_row

WaitReply = Union[str, Callable[[Node], Union[str, Awaitable[str]]]]


async def tree_rows_for_training(tree: Tree, policy: Policy, *, wait_reply: WaitReply,
                                 pair_settings: Optional[PairSettings] = None,
                                 judge_settings: Optional[JudgeSettings] = None, signal_seed: int = 0,
                                 good: bool = True, concurrency: int = 8) -> tuple[list[dict], Counter]:
    """Revision rows (and good rows) of one tree, and counts: the pairing's, the judge's, rows by kind and walk
    status, drops by reason. `wait_reply` is the env's answer to "wait" after the last bad step: a fixed text or
    a function of that node (sync or async)."""
    ps = pair_settings or PairSettings()
    tp = make_pairs(tree, ps)
    counts: Counter = Counter(tp.counts)
    rows: list[dict] = []
    if tp.pairs:
        judge = StepJudge(tree, policy, judge_settings)
        sem = asyncio.Semaphore(concurrency)

        async def one(pair):
            async with sem:
                walk = await first_error_walk(tree, pair, judge)
                counts[f"walk_{walk.status}"] += 1
                if not walk.usable:
                    counts[f"dropped_{walk.status}"] += 1
                    return None
                try:
                    reply = wait_reply(walk.end) if callable(wait_reply) else wait_reply
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception:
                    counts["dropped_wait_reply_error"] += 1
                    return None
                return revision_row(tree, pair, walk, wait_reply=reply, alpha=ps.alpha, beta=ps.beta,
                                    signal_seed=signal_seed)

        for r in await asyncio.gather(*(one(p) for p in tp.pairs)):
            if r is not None:
                rows.append(r)
        counts.update(judge.stats)
    counts["rows_revision"] = len(rows)
    if good and tp.skipped != "tree_error":
        g = good_rows(tree, ps.alpha)
        rows += g
        counts["rows_good"] = len(g)
    return rows, counts
