"""Tags on the current flow run: how `errata runs` finds a run's dataset, recipe and version."""
from __future__ import annotations

FLOW_NAMES = ["errata-build", "errata-export"]      # the flows whose runs `errata runs` lists


def add_tags(tags: list[str]) -> None:
    """Add tags to the current flow run (no-op outside one)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    run_id = flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(run_id)
        client.update_flow_run(run_id, tags=sorted(set(fr.tags or []) | set(tags)))
