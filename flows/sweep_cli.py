"""``cifar sweep``: one ``cifar`` run per grid point x seed, aggregated (flows/sweep.py).

    cifar sweep PIPELINE --grid KEY=V1,V2 [--grid ...] [--ablate KEY=V ...]
                [--seeds N | --seed S1,S2] [--pool NAME] [--promote best] [--json]

The sweep is checked (every point's settings loaded) before Prefect starts. Without
``PREFECT_API_URL`` it runs on the command's own temporary API (``flows.embedded``), the children
one after another here; ``--pool`` needs a server and runs them on that work pool's workers.
"""

from __future__ import annotations

import json
import sys

from flows import interrupts
from flows.config import parse_set


def add_sweep_parser(sub, common) -> None:
    cmd = sub.add_parser("sweep", help="run a pipeline once per grid point x seed (children are ordinary, "
                                       "cached runs, none promoted) and aggregate mean ± sd per point")
    cmd.add_argument("pipeline", help="pipeline name in the config file")
    cmd.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                     help="sweep this setting over these values (typed like --set); repeatable: the "
                          "cartesian product of all --grid keys")
    cmd.add_argument("--ablate", action="append", default=[], metavar="KEY=V",
                     help="beside the base point, one point with only this key changed; repeatable "
                          "(e.g. --ablate training.recipe.lookahead=false)")
    seeds = cmd.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="N seeds per point: training.seed, +1, ... (default: 1)")
    seeds.add_argument("--seed", default=None, metavar="S1,S2", help="these seeds per point")
    cmd.add_argument("--pool", default=None, metavar="NAME",
                     help="run the children on this work pool's workers, in parallel (needs PREFECT_API_URL)")
    cmd.add_argument("--promote", choices=["best"], default=None,
                     help="then promote the child with the best validation accuracy")
    cmd.add_argument("--json", action="store_true", help="print the aggregate as JSON")
    common(cmd)


def _import_flow():
    from flows.sweep import cifar_sweep

    return cifar_sweep


def cmd_sweep(args) -> int:
    from flows.sweep_plan import format_table, plan
    from tasks.core.guards_text import escape

    overrides = parse_set(args.overrides)
    checked = plan(args.pipeline, args.config, overrides, args.grid, args.ablate, args.seeds, args.seed)
    if args.pool:
        from flows.deploy import require_server

        require_server("cifar sweep")
    from flows.embedded import embedded_api

    try:
        with embedded_api(meanwhile=_import_flow) as cifar_sweep:
            out = cifar_sweep(pipeline=args.pipeline, grid=args.grid, ablate=args.ablate, seeds=args.seeds,
                              seed=args.seed, overrides=overrides, config=checked.config, pool=args.pool,
                              promote=args.promote)
    except BaseException as exc:
        if (signum := interrupts.signal_of(exc)) is None:
            raise
        from flows.sweep import cancelled_by_signal, current_child

        line = interrupts.message(f"cifar sweep {args.pipeline}", signum)
        if (child := current_child()) and child not in line:
            line += f", in {child}"
        cancelled = cancelled_by_signal()
        if args.pool:
            line += (f"; cancelled {len(cancelled)} run(s) of the sweep not finished yet on work pool "
                     f"{args.pool!r}: {', '.join(cancelled) or 'none'}")
        line += ". Run the same command again: finished children are cached, only the rest train"
        print(line, file=sys.stderr)
        return interrupts.exit_code(signum)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_table(out["points"]))
        for seen in sorted({text for row in out["points"] for text in row.get("validated_on", [])}):
            print(f"validated on {escape(seen)}")
        for child in out["failed"]:
            print(f"{args.pipeline}: child seed {child['seed']} ended {child['state']}: {child['message']}",
                  file=sys.stderr)
        if out["promoted"]:
            done = out["promoted"]
            print(f"{args.pipeline}: run {done['run_id']} is the champion"
                  + (" already" if done["already"] else f" (was {done['replaced']}); {done['reason']}"))
        print(f"sweep:  {out['page']}")
    if out.get("promote_refused"):
        print(f"error: {out['promote_refused']}", file=sys.stderr)
        return 2
    return 1 if out["failed"] else 0
