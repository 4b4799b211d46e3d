"""The ``cifar-sweep`` flow: one ordinary ``cifar`` flow run per grid point x seed, then one
aggregate. Thin: what to run and what the results add up to is ``flows/sweep_plan.py``.

Where the children run:

- on the temporary API (``cifar sweep`` with no ``--pool``): one after another, as subflows of
  the sweep in this process, each with ``return_state=True`` so that one failed child does not
  stop the others (the sweep reports it);
- with ``--pool NAME`` against a Prefect server: each child is a run of the deployment
  ``cifar/<pipeline>-sweep`` (registered here, idempotently, from this checkout, without the
  one-run-at-a-time limit of ``cifar deploy``'s deployments) on that work pool, submitted with
  ``run_deployment(..., timeout=0)``; the pool's workers run them in parallel, the sweep waits
  until each is final. Their results come back through Prefect's result storage (flow ``cifar``
  persists its summary): workers on other machines must share it with the sweep
  (``PREFECT_LOCAL_STORAGE_PATH`` on a shared folder, or a remote storage block as
  ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``), as they already share data_dir and artifacts_dir.

Every child is an ordinary run: cached (a rerun of the sweep trains nothing new), saved and
reported; none is promoted by the rule (``promote.auto=false``). ``promote="best"`` then names
the child with the best validation accuracy champion through ``tasks.store.manual``.
Numbers are read from each run's folder only through the verified readers (``tasks.core.runs``):
a damaged run shows as damaged, never as a number.

1) plan - parse and check the points and seeds (``flows.sweep_plan.plan``);
2) run the children - subflows here, or deployment runs on the pool;
3) read - each child's run folder, verified;
4) aggregate - per point: validation and test accuracy mean ± sd, n, training seconds, runs;
5) publish - a ``sweep-<pipeline>`` table artifact, the page ``artifacts/sweeps/...html``, the log;
6) promote - with ``promote="best"`` only: the best child by validation accuracy.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows import interrupts
from flows.config import DEFAULT_CONFIG, load_settings
from flows.sweep_plan import (
    Child, Plan, SweepError, aggregate, best_by_validation, plan, point_label, read_child, table_rows,
)
from tasks.core.logs import get_logger
from tasks.core.numbers import pct

POLL_SECONDS = 2.0
NOTE_EVERY_SECONDS = 60.0  # while waiting on a pool: how often to say what the runs are waiting for
_cancelled: list[str] = []  # the pool runs a signal cancelled, for the command's last line
_current: list[str] = []  # the child running here now, for the same line


def sweep_name(pipeline: str, when: datetime) -> str:
    return f"{pipeline}-{when:%Y%m%d-%H%M%S}"


def _run_name() -> str:
    params = flow_run.parameters or {}
    return f"sweep {params.get('pipeline', '?')} · {datetime.now():%Y-%m-%d %H:%M:%S}"


def current_child() -> str | None:
    """The child of a sweep running here now (``child 2/4 of the sweep (point, seed)``), or None."""
    return _current[-1] if _current else None


def cancelled_by_signal() -> list[str]:
    """Flow run ids of the pool runs this process cancelled when a signal stopped the sweep."""
    return list(_cancelled)


# --------------------------------------------------------------------------- here
def _child_from_state(i: int, seed: int, state, result: Any) -> Child:
    child = Child(point=i, seed=seed, state=state.name, flow_run_id=str(state.state_details.flow_run_id or "") or None)
    if state.is_completed() and isinstance(result, dict) and result.get("run_id"):
        child.run_id, child.run_dir = str(result["run_id"]), str(result.get("run_dir"))
    elif state.is_completed():
        child.state, child.message = "Completed (no result)", f"its result is not a cifar summary: {result!r:.200}"
    else:
        child.message = str(result if isinstance(result, BaseException) else state.message or state.name)[:500]
    return child


def run_here(p: Plan) -> list[Child]:
    """Each child as a subflow of the sweep, one after another; a failure is recorded, not raised."""
    from flows.cifar import cifar

    log, out = get_logger(), []
    total = len(p.children)
    for n, (i, seed, overrides) in enumerate(p.children, 1):
        label = f"child {n}/{total} of the sweep ({point_label(p.points[i])}, seed {seed})"
        log.info("%s", label)
        _current[:] = [label]
        with interrupts.doing(label):
            state = cifar(pipeline=p.pipeline, overrides=overrides, config=p.config, return_state=True)
        _current.clear()
        out.append(_child_from_state(i, seed, state, state.result(raise_on_failure=False)))
        if not state.is_completed():
            log.warning("%s ended %s: %s", label, state.name, out[-1].message)
    return out


# --------------------------------------------------------------------------- on a pool
def run_on_pool(p: Plan, settings, pool: str, name: str) -> list[Child]:
    """Each child as a run of ``cifar/<pipeline>-sweep`` on ``pool``; wait until all are final.
    A signal while waiting cancels the runs not final yet (state Cancelling) and is re-raised."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import register_sweep_deployment

    log = get_logger()
    deployment, config, warning = register_sweep_deployment(settings, pool, p.pipeline)
    if warning:
        log.warning("%s", warning)
    submitted: list[tuple[int, int, Any]] = []
    try:
        with interrupts.doing(f"the sweep's runs of {deployment} on work pool {pool!r}"):
            for i, seed, overrides in p.children:
                fr = run_deployment(deployment, parameters={"overrides": overrides, "config": config},
                                    timeout=0,
                                    tags=[f"sweep:{name}"],
                                    flow_run_name=f"{p.pipeline} · {point_label(p.points[i])} · seed {seed}")
                submitted.append((i, seed, fr.id))
            log.info("submitted %d run(s) of %s to work pool %r; waiting for them", len(submitted), deployment, pool)
            final = _wait(get_client, [fid for _, _, fid in submitted], pool)
    except BaseException as exc:
        if interrupts.signal_of(exc) is not None and submitted:
            _cancel(get_client, [fid for _, _, fid in submitted])
        raise
    out = []
    for i, seed, fid in submitted:
        fr = final[fid]
        try:  # from Prefect's result storage, which the workers must share with this process
            result = fr.state.result(raise_on_failure=False) if fr.state.is_completed() else None
        except Exception as exc:  # noqa: BLE001 - unreadable or missing: said per child, not a crash
            result = exc
        if isinstance(result, BaseException) and fr.state.is_completed():
            child = Child(i, seed, "Completed (no result)", str(fid), message=(
                f"its result could not be read ({type(result).__name__}: {result}); workers on other "
                "machines must share Prefect's result storage with the sweep (docs/sweeps.md)")[:500])
        else:
            child = _child_from_state(i, seed, fr.state, result if fr.state.is_completed() else fr.state.message)
            child.flow_run_id = str(fid)
        out.append(child)
    return out


def waiting_note(states: list[str], pool: str) -> str:
    """What a pool sweep is waiting for, from its runs' state names: how many are final, how many
    run, and -- when some have not started -- the worker they need."""
    counts: dict[str, int] = {}
    for name in states:
        counts[name] = counts.get(name, 0) + 1
    line = "waiting: " + ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    if any(name in ("Scheduled", "Pending", "Late", "AwaitingRetry") for name in counts):
        line += (f"; a run that has not started waits for a worker of work pool {pool!r} "
                 f"(`prefect worker start --pool {pool}`) and for its training slot")
    return line


def _wait(get_client, ids: list, pool: str) -> dict:
    """{flow run id: flow run} once every run is in a final state; every NOTE_EVERY_SECONDS
    without a run ending, a line saying what they wait for (``waiting_note``)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    log, done, noted = get_logger(), {}, time.monotonic()
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids))
            for fr in runs:
                if fr.state and fr.state.is_final() and fr.id not in done:
                    done[fr.id] = fr
                    noted = time.monotonic()
                    log.info("%s: %s (%d/%d final)", fr.name, fr.state.name, len(done), len(ids))
            if len(done) == len(ids):
                return done
            if time.monotonic() - noted >= NOTE_EVERY_SECONDS:
                log.info("%s", waiting_note([fr.state.name if fr.state else "Unknown" for fr in runs], pool))
                noted = time.monotonic()
            time.sleep(POLL_SECONDS)


def _cancel(get_client, ids: list) -> None:
    """Prefect's cancel for each run not final yet: state Cancelling; its worker stops it."""
    from prefect.states import Cancelling

    _cancelled.clear()
    with get_client(sync_client=True) as client:
        for fid in ids:
            try:
                fr = client.read_flow_run(fid)
                if fr.state is None or not fr.state.is_final():
                    client.set_flow_run_state(fid, Cancelling(message="the sweep that started it was interrupted"),
                                              force=True)
                    _cancelled.append(str(fid))
            except Exception as exc:  # noqa: BLE001 - one run's failure to cancel must not hide the others
                get_logger().warning("could not cancel flow run %s: %s", fid, exc)


# --------------------------------------------------------------------------- the flow
def promote_best(settings, pipeline: str, children: list[Child], name: str) -> dict[str, Any]:
    """Name the child with the best validation accuracy champion (``tasks.store.manual``)."""
    from tasks.store.manual import promote_by_hand

    best = best_by_validation(children)
    if best is None:
        on_test = any(c.validation_protocol == "test" for c in children)
        why = (" (they validated on the test split, `validation: test`: choosing the best of them there "
               "would be choosing on the test set; hold training images out with "
               "--set dataset.validation=0.1)" if on_test else "")
        raise SweepError([f"--promote best: no child of sweep {name} has a validation accuracy on held-out "
                          f"images (metrics.json validation_accuracy) that verifies{why}, so none can be chosen "
                          "by it; nothing was promoted. Promote one by hand with `cifar promote` if you must."],
                         "command line")
    reason = (f"best validation accuracy {pct(best.validation_accuracy)} of sweep {name} "
              f"({len(children)} child runs; seed {best.seed})")
    done = promote_by_hand(settings.artifacts_dir, pipeline, best.run_id, reason=reason,
                           metric=settings.pipeline(pipeline).promote.metric, via="`cifar sweep --promote best`")
    if not done["already"]:
        from tasks.report.rendering import refresh_pages

        refresh_pages(settings.artifacts_dir, pipeline, [done["run_id"], done["replaced"]])
    return done


@flow(name="cifar-sweep", flow_run_name=_run_name, log_prints=True)
def cifar_sweep(
    pipeline: str = Field("train", description="a pipeline of the config file"),
    grid: list[str] | None = Field(None, description="KEY=V1,V2 items, as `cifar sweep --grid` takes them"),
    ablate: list[str] | None = Field(None, description="KEY=V items, as `cifar sweep --ablate` takes them"),
    seeds: int | None = Field(None, description="seeds training.seed, +1, ... (this many)"),
    seed: str | None = Field(None, description="the seeds, comma-separated (instead of seeds)"),
    overrides: dict[str, Any] | None = Field(None, description="settings for every child, as --set"),
    config: str = Field(DEFAULT_CONFIG, description="the pipelines file"),
    pool: str | None = Field(None, description="run the children on this work pool (a server is needed)"),
    promote: str | None = Field(None, description="'best': promote the best child by validation accuracy"),
) -> dict[str, Any]:
    """Sweep one pipeline over grid points x seeds (module docstring: the stages 1-6)."""
    if promote not in (None, "best"):
        raise SweepError([f"promote={promote!r}: only 'best' (by validation accuracy) is known"], "command line")
    p = plan(pipeline, config, overrides or {}, grid, ablate, seeds, seed)
    settings = load_settings(p.config, p.base, pipeline)
    started = datetime.now(timezone.utc)
    name = sweep_name(pipeline, started)
    log = get_logger()
    log.info("sweep %s: %d point(s) x %d seed(s) = %d child run(s)%s", name, len(p.points), len(p.seeds),
             len(p.children), f" on work pool {pool!r}" if pool else ", one after another here")
    children = run_on_pool(p, settings, pool, name) if pool else run_here(p)

    from tasks.core import runs
    from tasks.report.publishing import artifact_key
    from tasks.report.sweep_page import write_page

    published = {r.run_id: r for r in runs.pipeline_runs(runs.pipeline_dir(settings.artifacts_dir, pipeline),
                                                          warn_damaged=False)}
    children = [read_child(c, published.get(c.run_id)) for c in children]
    rows = aggregate(p, children)
    cells = table_rows(rows)
    notes = [f"seeds {', '.join(map(str, p.seeds))}; every child with promote.auto=false"]
    notes += [f"validation accuracy on {seen}" for seen in sorted({t for r in rows for t in r["validated_on"]})]
    notes += [f"point {rows[c.point]['point']}, seed {c.seed}: {c.state}: {c.message}" for c in children if c.message]
    page = write_page(settings.artifacts_dir, rows, cells, pipeline=pipeline, sweep=name, notes=notes, when=started)

    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=artifact_key("sweep", pipeline), table=cells,
                          description=f"Sweep {name}: {len(p.children)} child runs; page {page}")
    log.info("sweep %s: %d of %d child run(s) completed; page %s", name,
             sum(c.state == "Completed" for c in children), len(children), page)
    promoted, refused = None, None
    if promote == "best":
        try:
            promoted = promote_best(settings, pipeline, children, name)
            log.info("promoted run %s: %s", promoted["run_id"], promoted["reason"])
        except SweepError as exc:  # the table above stands; the command says why and exits 2
            refused = "; ".join(exc.problems)
            log.error("%s", refused)
    return {
        "pipeline": pipeline, "sweep": name, "flow_run_id": str(flow_run.id) if flow_run.id else None, "pool": pool, "seeds": p.seeds,
        "points": rows, "page": str(page),
        "children": [vars(c) for c in children],
        "failed": [vars(c) for c in children if c.state != "Completed"],
        "promoted": promoted, "promote_refused": refused,
    }
