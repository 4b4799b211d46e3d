"""Benchmark a rerun with nothing changed: `cifar run PIPELINE` when every stage is cached.

    .venv/bin/python -m bench.bench_rerun --pipeline smoke-jpeg      # results in bench/out/rerun.json
    .venv/bin/python -m bench.bench_rerun --pipeline train-jpeg --repeat 5

Precondition: the pipeline already ran on this data_dir/artifacts_dir (if it did not, the warm-up
run below does it, and says so). Then, each in a fresh process:

1. wall: `cifar run PIPELINE` N times, as a user types it (interpreter start and exit included);
2. where the time goes, in one instrumented process doing what `cifar run` does, step by step:
   interpreter start, imports (flows.cli, prefect, the stage modules), the Prefect embedded API
   start, the flow call (and, from the flow's returned summary, each stage's cache check), exit
   (the embedded API is stopped at exit);
3. imports: `python -X importtime -m flows.cli run PIPELINE`, summed per top-level package, and
   whether TensorFlow / Keras / matplotlib were imported at all (a cached rerun must not).

PREFECT_HOME is bench/out/prefect-home by default (its SQLite file is created once, in the
warm-up), so other Prefect processes on the machine do not share the embedded API's database;
`--prefect-home -` keeps the caller's. Prints a table; writes JSON to bench/out/rerun.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
HEAVY = ("tensorflow", "keras", "matplotlib", "pandera", "pandas", "PIL", "jinja2")


# --------------------------------------------------------------------------- the instrumented child
def child(args: argparse.Namespace) -> None:
    """What `cifar run` does, timed step by step (stdlib only before the first mark)."""
    marks = {"interpreter_start_s": time.time() - float(os.environ["BENCH_T0"])}
    t = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        marks[name] = round(now - t, 4)
        t = now

    import flows.cli  # noqa: F401  (sets DO_NOT_TRACK etc. before Prefect is imported, as `cifar` does)
    import prefect  # noqa: F401

    mark("import_cli_prefect_s")
    import flows.cifar  # noqa: F401
    import tasks.download.tasks, tasks.prepare.tasks, tasks.report.tasks  # noqa: E401, F401
    import tasks.store.tasks, tasks.train.tasks  # noqa: E401, F401

    mark("import_flow_and_stages_s")
    from flows.config import load_settings, parse_set
    from prefect.settings import PREFECT_API_URL

    overrides = parse_set(args.overrides)
    settings = load_settings(args.config, overrides, args.pipeline)
    mark("load_config_s")
    if not PREFECT_API_URL.value():
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()  # the singleton the flow engine's client then reuses
    mark("api_start_s")
    summary = flows.cifar.cifar(pipeline=args.pipeline, overrides=overrides, config=str(settings.config_path))
    mark("flow_call_s")
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    Path(args.child_out).write_text(json.dumps({
        "marks": marks, "stages": summary["stages"], "run_id": summary["run_id"],
        "test_accuracy": summary["test_accuracy"], "heavy_modules_loaded": heavy,
        "api": PREFECT_API_URL.value() or "embedded", "end_epoch": time.time(),
    }))


# --------------------------------------------------------------------------- the parent
def _env(prefect_home: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if prefect_home:
        Path(prefect_home).mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = prefect_home
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cifar_argv(args) -> list[str]:
    argv = ["run", args.pipeline, "--config", str(args.config)]
    for o in args.overrides:
        argv += ["--set", o]
    return argv


def _timed(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}; see {log}:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def importtime_summary(stderr: str, top: int = 10) -> dict:
    """Sum `-X importtime` cumulative times of top-level imports per top-level package."""
    per_pkg: dict[str, int] = {}
    total = 0
    for m in re.finditer(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", stderr, re.M):
        self_us, cum_us, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
        total += self_us
        if indent <= 1:  # imported from __main__ (the script or a lazy import inside a function)
            pkg = name.split(".")[0]
            per_pkg[pkg] = per_pkg.get(pkg, 0) + cum_us
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \| *(\S+)", stderr, re.M))
    ranked = sorted(per_pkg.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_s": round(total / 1e6, 3),
        "top_packages_s": {k: round(v / 1e6, 3) for k, v in ranked},
        "modules": len(modules),
        "heavy_imported": sorted(h for h in HEAVY if h in {m.split(".")[0] for m in modules}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default="smoke-jpeg")
    ap.add_argument("--config", default=str(ROOT / "pipelines.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--repeat", type=int, default=3, help="timed `cifar run` reruns (default 3)")
    ap.add_argument("--prefect-home", default=str(OUT / "prefect-home"),
                    help="PREFECT_HOME for every run ('-': keep the caller's)")
    ap.add_argument("--timeout", type=float, default=3600, help="per process, seconds")
    ap.add_argument("--out", default=str(OUT / "rerun.json"))
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_out:
        child(args)
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "rerun-logs"
    logs.mkdir(exist_ok=True)
    env = _env(None if args.prefect_home == "-" else args.prefect_home)
    py = sys.executable
    cifar = [py, "-m", "flows.cli"] if not (Path(py).parent / "cifar").exists() else [str(Path(py).parent / "cifar")]

    # 0) warm-up: makes sure everything is cached (and the embedded API's database exists)
    print(f"warm-up: cifar {' '.join(_cifar_argv(args))} ...", flush=True)
    warm_wall, warm_out = _timed(cifar + _cifar_argv(args), env, logs / "warmup.log", args.timeout)
    warm_trained = "train_model" in warm_out and "Cached" not in _state_line(warm_out, "train_model")

    # 1) wall of the real command
    walls = []
    for i in range(args.repeat):
        wall, out = _timed(cifar + _cifar_argv(args), env, logs / f"rerun-{i + 1}.log", args.timeout)
        walls.append(round(wall, 3))
        print(f"rerun {i + 1}/{args.repeat}: {wall:.2f} s", flush=True)

    # 2) instrumented
    child_out = OUT / "rerun-child.json"
    child_env = dict(env, BENCH_T0=repr(time.time()))
    t0 = time.perf_counter()
    _timed([py, "-m", "bench.bench_rerun", "--pipeline", args.pipeline, "--config", str(args.config),
            *sum((["--set", o] for o in args.overrides), []), "--child-out", str(child_out)],
           child_env, logs / "instrumented.log", args.timeout)
    child_wall = time.perf_counter() - t0
    inst = json.loads(child_out.read_text())
    inst["marks"]["exit_s"] = round(max(0.0, time.time() - inst.pop("end_epoch")), 3)
    inst["wall_s"] = round(child_wall, 3)

    # 3) imports
    proc = subprocess.run([py, "-X", "importtime", "-m", "flows.cli", *_cifar_argv(args)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    (logs / "importtime.log").write_text(proc.stderr)
    imports = importtime_summary(proc.stderr)

    # 4) the embedded API's own imports (its subprocess pays them at every start)
    t0 = time.perf_counter()
    subprocess.run([py, "-c", "import prefect.server.api.server"], env=env, check=True, timeout=args.timeout)
    api_imports = round(time.perf_counter() - t0, 3)

    result = {
        "pipeline": args.pipeline,
        "config": str(args.config),
        "overrides": args.overrides,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "prefect_home": env.get("PREFECT_HOME", "~/.prefect"),
        "warmup": {"wall_s": round(warm_wall, 3), "trained": warm_trained},
        "rerun_wall_s": {"runs": walls, "median": statistics.median(walls), "min": min(walls), "max": max(walls)},
        "instrumented": inst,
        "imports": imports,
        "api_server_import_s": api_imports,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"\nJSON: {args.out}   logs: {logs}")
    return 0


def _state_line(out: str, task: str) -> str:
    lines = [ln for ln in out.splitlines() if task in ln and "Finished in state" in ln]
    return lines[-1] if lines else ""


def format_table(r: dict) -> str:
    inst, m = r["instrumented"], r["instrumented"]["marks"]
    w = r["rerun_wall_s"]
    rows = [
        ("`cifar run` wall, nothing changed (median)", f"{w['median']:.2f} s",
         f"{len(w['runs'])} runs: " + ", ".join(f"{x:.2f}" for x in w["runs"])),
        ("warm-up run", f"{r['warmup']['wall_s']:.2f} s", "trained" if r["warmup"]["trained"] else "cached"),
        ("-- instrumented process --", f"{inst['wall_s']:.2f} s", "wall"),
        ("interpreter start", f"{m['interpreter_start_s']:.2f} s", ""),
        ("import flows.cli + prefect", f"{m['import_cli_prefect_s']:.2f} s", ""),
        ("import flows.cifar + tasks.*", f"{m['import_flow_and_stages_s']:.2f} s", ""),
        ("load pipelines.yaml", f"{m['load_config_s']:.2f} s", ""),
        ("Prefect embedded API start", f"{m['api_start_s']:.2f} s", inst["api"]),
        ("  of which its server imports", f"{r['api_server_import_s']:.2f} s",
         "fresh `python -c 'import prefect.server.api.server'`"),
        ("flow call", f"{m['flow_call_s']:.2f} s", "stages below; the rest is flow-run bookkeeping"),
    ]
    for name, s in inst["stages"].items():
        rows.append((f"  stage {name}", f"{s['seconds']:.2f} s", "cache hit" if s["cache_hit"] else "RAN"))
    rows.append(("  flow-run overhead", f"{m['flow_call_s'] - sum(s['seconds'] for s in inst['stages'].values()):.2f} s", ""))
    rows.append(("exit (embedded API stop)", f"{m['exit_s']:.2f} s", ""))
    imp = r["imports"]
    rows.append(("-X importtime, all imports", f"{imp['total_s']:.2f} s",
                 f"{imp['modules']} modules; heavy: {', '.join(imp['heavy_imported']) or 'none'}"))
    for pkg, s in imp["top_packages_s"].items():
        rows.append((f"  {pkg}", f"{s:.2f} s", ""))
    width = max(len(a) for a, _, _ in rows)
    head = (f"rerun of {r['pipeline']} with nothing changed ({r['machine']['cpus']} CPUs, "
            f"load average {r['machine']['loadavg_1m_at_end']} at the end)")
    return "\n".join([head, "-" * len(head)] + [f"{a:<{width}}  {b:>9}  {c}" for a, b, c in rows])


if __name__ == "__main__":
    sys.exit(main())
