"""``cifar``: the command line. Thin: it parses, calls flows or stage functions, prints."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

# Never call home, before Prefect is imported anywhere (users run this on offline clusters).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The embedded API's first start creates its SQLite database: slow on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Flow runs say every 30 s that their process is alive (Prefect's minimum; its default is 180 s), so
# the zombie automation marks a killed run Crashed (automations/README.md; flows/jobs.py).
from flows.jobs import HEARTBEAT_ENV, HEARTBEAT_SECONDS  # noqa: E402

if not any(os.environ.get(v) for v in HEARTBEAT_ENV):
    os.environ[HEARTBEAT_ENV[0]] = str(HEARTBEAT_SECONDS)

# Neither flows.config nor any stage's config imports Prefect or TensorFlow (tests/test_imports.py):
# --help and `cifar predict` start at once; the commands that run flows import Prefect themselves.
from flows import interrupts  # noqa: E402
from flows.config import DEFAULT_CONFIG, Settings, config_schema, load_settings, parse_set  # noqa: E402
from flows.config_limits import is_pipeline_name  # noqa: E402
from flows.failures import disk_fault, quiet_expected_tracebacks  # noqa: E402
from flows.endpoint_cli import add_endpoint_parser, cmd_endpoint  # noqa: E402
from flows.predict_cli import add_predict_parser, cmd_predict  # noqa: E402
from flows.reports_server import port_number  # noqa: E402
from flows.sweep_cli import add_sweep_parser, cmd_sweep  # noqa: E402
from tasks.core.errors import CifarError, ConfigError  # noqa: E402
from tasks.download.errors import TransientDownloadError  # noqa: E402


def _common(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help="pipelines file (default: %(default)s)")
    cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, typed like the file: a key inside the pipeline "
                        "(training.epochs=1, dataset.limit_train=500) or a top-level one "
                        "(data_dir=/big/disk/cifar); repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cifar",
        description="CIFAR-10 training pipelines on Prefect: download -> validate -> train -> "
                    "save -> report, every slow step cached.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cmd = sub.add_parser("run", help="run a whole pipeline in this process (embedded Prefect API "
                                   "unless PREFECT_API_URL is set)")
    cmd.add_argument("pipeline", help="pipeline name in the config file")
    cmd.add_argument("--force", action="store_true", help="retrain even if a model for the same inputs exists")
    _common(cmd)

    cmd = sub.add_parser("data", help="download, cache and validate a pipeline's data; print a summary")
    cmd.add_argument("pipeline")
    cmd.add_argument("--json", action="store_true", help="print the summary as JSON")
    _common(cmd)

    cmd = sub.add_parser("check", help="validate the config file and print its pipelines")
    cmd.add_argument("--schema", action="store_true",
                   help="print the JSON Schema of the config file instead (for editors and CI)")
    _common(cmd)

    cmd = sub.add_parser("serve", help="serve one deployment per pipeline (with schedules) on a Prefect server")
    cmd.add_argument("--pipeline", action="append", dest="only", metavar="NAME",
                   help="serve only these pipelines (repeatable; default: all)")
    _common(cmd)

    cmd = sub.add_parser("deploy", help="register the deployments to a Prefect work pool (scale-out)")
    cmd.add_argument("--pool", required=True, help="work pool name (process, docker or kubernetes)")
    cmd.add_argument("--pipeline", action="append", dest="only", metavar="NAME")
    cmd.add_argument("--queue", default=None, help="work queue within the pool")
    cmd.add_argument("--image", default=None, help="container image for docker/kubernetes pools")
    cmd.add_argument("--job-variable", action="append", dest="job_variables", default=[], metavar="KEY=VALUE",
                   help="a job variable of the pool's job template, over the pipeline's deploy: block; "
                        "env.NAME=VALUE sets one environment variable (env.CUDA_VISIBLE_DEVICES=0); repeatable")
    _common(cmd)

    cmd = sub.add_parser("reports", help="serve artifacts_dir read-only over HTTP on 127.0.0.1 (report "
                                       "links from Prefect's UI)")
    cmd.add_argument("--port", type=port_number, default=8765,
                     help="port on 127.0.0.1, 0 to 65535 (0: any free port; default: %(default)s)")
    _common(cmd)

    cmd = sub.add_parser("runs", help="list registered runs (newest first)")
    cmd.add_argument("pipeline", nargs="?", help="only this pipeline")
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    _common(cmd)

    cmd = sub.add_parser("promote", help="name a run the champion of its pipeline by hand, or roll back "
                                       "(--previous); recorded in registry.json with when and why")
    cmd.add_argument("pipeline")
    cmd.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to name (`cifar runs PIPELINE` lists them)")
    cmd.add_argument("--previous", action="store_true", help="roll back to the champion before the current one")
    cmd.add_argument("--reason", metavar="TEXT", help="why, recorded in the registry and shown in the reports")
    _common(cmd)

    cmd = sub.add_parser("report", help="regenerate a run's report (and the index) without retraining")
    cmd.add_argument("run", help="a run folder, PIPELINE/RUN_ID, or a run id (searched under artifacts_dir)")
    _common(cmd)

    cmd = sub.add_parser("compare", help="write a page comparing any two runs (of one pipeline or two)")
    cmd.add_argument("run_a", help="a run folder, PIPELINE/RUN_ID, or a run id")
    cmd.add_argument("run_b", help="the other run, given the same ways")
    _common(cmd)

    add_predict_parser(sub, _common)
    add_endpoint_parser(sub, _common)
    add_sweep_parser(sub, _common)
    return parser


# --------------------------------------------------------------------------- commands
def _settings(args, pipeline: str | None = None) -> Settings:
    return load_settings(args.config, parse_set(args.overrides), pipeline)


def cmd_check(args) -> int:
    if args.schema:
        print(json.dumps(config_schema(), indent=2))
        return 0
    settings = _settings(args)
    print(f"{settings.config_path}: OK")
    print(f"  data_dir      {settings.data_dir}")
    print(f"  artifacts_dir {settings.artifacts_dir}")
    print(f"  train_slots   {settings.train_slots or 1} training(s) at a time per machine (or GPU set)")
    for name, pipeline in settings.pipelines.items():
        schedule, dataset, training = pipeline.schedule, pipeline.dataset, pipeline.training
        when = f"cron '{schedule.cron}' {schedule.timezone}" if schedule else "no schedule"
        limits = "" if dataset.limit_train is None else f" limit {dataset.limit_train}/{dataset.limit_test}"
        print(f"  {name:<12} {pipeline.model} on {dataset.format}{limits}, {training.epochs_text()}, "
              f"batch {training.batch_size}; {when}")
        print(f"  {'':<12} validation: {pipeline.dataset.holdout.describe()}; promoted by {pipeline.promote.metric}")
        if pipeline.expect:
            print(f"  {'':<12} expect: {pipeline.expect}")
    return 0


def cmd_run(args) -> int:
    overrides = parse_set(args.overrides)
    settings = load_settings(args.config, overrides, args.pipeline)  # fail fast, before Prefect starts
    chosen = settings.pipeline(args.pipeline)
    _folders_usable(settings.data_dir, settings.artifacts_dir)
    from flows.embedded import embedded_api

    # The embedded API is this command's child, gone with it even after a kill -9, and stopped
    # before the last lines below (no Prefect line after the report's path). The flow's imports
    # run while it starts.
    with embedded_api(meanwhile=_import_run_flow) as (cifar, tags, run_lines), \
            tags(f"pipeline:{chosen.name}", f"model:{chosen.model}"):
        summary = cifar(pipeline=args.pipeline, overrides=overrides, force=args.force,
                        config=str(settings.config_path))
    if "chief_run" in summary:  # a multi-worker worker: the chief saved and reports the run
        print(f"{chosen.name}: {summary['role']} trained with the chief, whose run is {summary['run_dir']}")
        print(summary["report"])
        return 0
    for line in run_lines(summary):  # a nothing-changed run says so, and never replays a promotion
        print(line)
    print(f"index:  {summary['index']}")
    print(summary["report"])  # the last line printed is the report's path
    return 0


def _folders_usable(*folders) -> None:
    """Create the folders the command writes under, before its Prefect API starts: a path through
    a file, a read-only disk or a missing permission is the same one paragraph (``disk_fault``)
    in a second, not after ~10 s of starting the API and the flow."""
    for folder in folders:
        os.makedirs(folder, exist_ok=True)


def _import_run_flow():
    from prefect import tags

    from flows.cifar import cifar
    from flows.outcomes import run_lines

    return cifar, tags, run_lines


def _import_data_flow():
    from flows.cifar import cifar_data

    return cifar_data


def cmd_data(args) -> int:
    overrides = parse_set(args.overrides)
    settings = load_settings(args.config, overrides, args.pipeline)
    _folders_usable(settings.data_dir)
    from flows.embedded import embedded_api

    with embedded_api(meanwhile=_import_data_flow) as cifar_data:
        summary = cifar_data(pipeline=args.pipeline, overrides=overrides, config=str(settings.config_path))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_data_summary(summary))
    return 0


def format_data_summary(summary: dict[str, Any]) -> str:
    ds, val = summary["dataset"], summary["validation"]
    lines = [
        f"pipeline {summary['pipeline']}: dataset {ds['fingerprint']} at {ds['path']}",
        f"  {ds['train_size']:,} train + {ds['test_size']:,} test images of shape "
        f"{tuple(ds['input_shape'])}, {len(ds['classes'])} classes",
    ]
    counts = val.get("counts", {})
    if counts:
        lines.append(f"  {'class':<14}{'train':>8}{'test':>8}")
        for cls in ds["classes"]:
            lines.append(f"  {cls:<14}{counts.get('train', {}).get(cls, 0):>8}{counts.get('test', {}).get(cls, 0):>8}")
    if "channel_mean" in val:
        fmt = lambda xs: "[" + ", ".join(f"{x:.4f}" for x in xs) + "]"  # noqa: E731
        lines.append(f"  channel mean {fmt(val['channel_mean'])}  std {fmt(val['channel_std'])}")
    if "train_test_duplicates" in val:
        lines.append(f"  images in both train and test: {val['train_test_duplicates']}")
    checks = val.get("checks", [])
    passed = sum(1 for c in checks if c.get("passed"))
    lines.append(f"  validation: {passed}/{len(checks)} checks passed")
    for c in checks:
        lines.append(f"    [{'ok' if c.get('passed') else 'FAIL'}] {c.get('name')}: {c.get('detail', '')}")
    for stage, t in summary.get("stages", {}).items():
        lines.append(f"  {stage}: {t['seconds']:.2f} s{' (cached)' if t['cache_hit'] else ''}")
    return "\n".join(lines)


def _known_pipeline(settings: Settings, name: str) -> None:
    """ConfigError (exit 2) unless ``name`` is a pipeline of the file or has runs on disk."""
    from tasks.core import runs

    on_disk = sorted(d.parent.name for d in settings.artifacts_dir.glob(f"*/{runs.RUNS}") if d.is_dir())
    if name in settings.pipelines or (is_pipeline_name(name) and name in on_disk):
        return
    others = [n for n in on_disk if n not in settings.pipelines]
    raise ConfigError([f"no pipeline named {name!r}; pipelines in this file: {', '.join(settings.pipelines)}"
                       + (f"; with runs under {settings.artifacts_dir}: {', '.join(others)}" if others else "")],
                      str(settings.config_path))


def cmd_runs(args) -> int:
    settings = _settings(args)
    from tasks.core.runs import list_runs
    from tasks.store.table import damage_warnings, format_runs_table, size_note

    if args.pipeline is not None:
        _known_pipeline(settings, args.pipeline)
    rows = list_runs(str(settings.artifacts_dir), args.pipeline)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    elif not rows:
        print(f"no runs yet under {settings.artifacts_dir}" + (f" for {args.pipeline}" if args.pipeline else ""))
    else:
        print(format_runs_table(rows))
        if note := size_note(rows):
            print(note)
    for line in damage_warnings(rows):  # a damaged run is never champion; say what to do
        print(line, file=sys.stderr)
    return 0


def cmd_promote(args) -> int:
    settings = _settings(args)
    from tasks.store.manual import PromoteError, promote_by_hand

    if (args.run_id is None) == (not args.previous):
        raise PromoteError("give either a RUN_ID to name champion, or --previous to roll back to the "
                           f"champion before the current one (`cifar runs {args.pipeline}` lists the runs)")
    _known_pipeline(settings, args.pipeline)
    known = settings.pipelines.get(args.pipeline)
    metric = known.promote.metric if known else "test_accuracy"
    done = promote_by_hand(settings.artifacts_dir, args.pipeline, args.run_id, reason=args.reason, metric=metric)
    if done["already"]:
        print(f"{args.pipeline}: run {done['run_id']} is the champion already; nothing changed")
        return 0
    print(f"{args.pipeline}: run {done['run_id']} is the champion"
          + (f" (was {done['replaced']})" if done["replaced"] else "") + f"; {done['reason']}")
    from tasks.report.rendering import refresh_pages

    for line in refresh_pages(settings.artifacts_dir, args.pipeline, [done["run_id"], done["replaced"]]):
        print(line)
    return 0


def cmd_report(args) -> int:
    settings = _settings(args)
    from tasks.report.rendering import regenerate

    # RUN: a run folder, PIPELINE/RUN_ID or a bare run id (resolved by the report stage)
    report, index = regenerate(args.run, str(settings.artifacts_dir))
    print(f"index:  {index}")
    print(report)
    return 0


def cmd_compare(args) -> int:
    from tasks.report.rendering import render_compare

    print(render_compare(args.run_a, args.run_b, str(_settings(args).artifacts_dir)))
    return 0


def cmd_serve(args) -> int:
    from flows.deploy import serve

    settings = _settings(args)
    with interrupts.ctrl_c_as_sigterm():
        serve(settings, args.only, parse_set(args.overrides))
    # Prefect's serve returns only when a signal stopped it (it handles SIGTERM and Ctrl-C itself,
    # cancelling the runs in progress): say so, with the signal's exit code.
    signum = interrupts.last_signal() or signal.SIGTERM
    print(interrupts.message("cifar serve", signum) + "; runs in progress were cancelled or marked "
          "Crashed (rerun them: finished stages are cached)", file=sys.stderr)
    return interrupts.exit_code(signum)


def cmd_deploy(args) -> int:
    from flows.deploy import deploy

    settings = _settings(args)
    from flows.jobs import parse_job_variables

    variables = parse_job_variables(args.job_variables)
    for line in deploy(settings, args.pool, args.only, queue=args.queue, image=args.image,
                       variables=variables, overrides=parse_set(args.overrides)):
        print(line)
    return 0


def cmd_reports(args) -> int:
    from flows.reports_server import serve_reports

    serve_reports(_settings(args).artifacts_dir, args.port)
    return 0


# The commands that run flows or talk to a Prefect API. The others read and write files only
# (check, runs, report, compare, promote, reports) or load no Prefect at all (predict, endpoint:
# flows/predict_cli.py): they skip Prefect's ~2 s import and start in well under a second.
NEEDS_PREFECT = frozenset({"run", "data", "serve", "deploy", "sweep"})

COMMANDS = {
    "run": cmd_run, "data": cmd_data, "check": cmd_check, "serve": cmd_serve,
    "deploy": cmd_deploy, "runs": cmd_runs, "report": cmd_report, "predict": cmd_predict, "promote": cmd_promote,
    "reports": cmd_reports, "endpoint": cmd_endpoint, "compare": cmd_compare,
    "sweep": cmd_sweep,
}


def _hint(exc: CifarError) -> str | None:
    """What to do next, for failures whose remedy is not the failing stage's business."""
    if isinstance(exc, TransientDownloadError):
        return ("If this machine cannot reach that URL: check the network or proxy, add `mirrors:` "
                "to the dataset, or copy the archive here and set dataset.source to its path (the "
                "same sha256 reuses everything). Offline, `cifar run smoke-jpeg` and `train-jpeg` "
                "train on a local copy of CIFAR-10 as JPEG files.")
    return None


def _command_line(args) -> str:
    target = getattr(args, "pipeline", None)
    return f"cifar {args.command}" + (f" {target}" if isinstance(target, str) else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupts.install()  # SIGTERM/SIGHUP unwind like Ctrl-C: runs marked, locks and servers freed
    try:
        if args.command in NEEDS_PREFECT:
            # Prefect's logging, which we then adjust, is set up by prefect.main (a bare
            # `import prefect` is lazy and sets up nothing)
            import prefect.main  # noqa: F401

            quiet_expected_tracebacks()
        return COMMANDS[args.command](args)
    except CifarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if hint := _hint(exc):
            print(hint, file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if (message := disk_fault(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 1
    except BaseException as exc:
        if (signum := interrupts.signal_of(exc)) is None:
            raise
        print(interrupts.message(_command_line(args), signum), file=sys.stderr)
        return interrupts.exit_code(signum)


if __name__ == "__main__":
    sys.exit(main())
