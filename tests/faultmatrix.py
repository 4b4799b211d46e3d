"""The fault matrix's machinery (issue 26), shared by its two test files (one per Prefect API).

A *chain* runs the real ``cifar run`` on tiny data, stopping it at one fault point after another
(``tasks/core/faults.py``: each run holds there until it is signalled) and signalling it there;
each next run must resume what the killed one left and go on to the next point; a last run,
unfaulted, must complete. So one chain of N points costs N + 1 runs, each stage's rerun being
the next fault's run. Which signal each point gets rotates through ``SIGNALS`` from an offset:
three offsets cover every (point, signal) cell once.

After each fault, within the bounds below: the process is gone (and everything it started); a
SIGTERM or SIGINT to the group exits 143/130 with one line naming the stage and no traceback; no
training slot is held. After the chain: the last run completed; the download resumed by Range;
the fit resumed at the epoch after the one it finished; a save stopped after publishing its run
was finished by the next (registry.json rolled forward); every published run's files verify
against the sha256s its metadata.json recorded; the registry names a champion that verifies;
the dataset cache verifies.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from archives import FileServer, build_binary_archive
from procs import Procs, exe, prefect_env, wait_until

POINTS = (
    "download.mid-stream", "decode.before-publish", "validate.before-record", "fit.mid-epoch",
    "save.before-registry", "save.after-registry", "report.before-write",
)
# A save killed after it published its run is finished by the next run, which then saves nothing:
# from this point on the chain trains a second model (another seed), so there is a save to stop.
SECOND_MODEL_FROM = "save.after-registry"
SIGNALS = ("kill -9", "SIGTERM to the group", "SIGINT to the group")
EXIT_BOUND = 15.0  # seconds from a SIGTERM/SIGINT to the process's exit
GONE_BOUND = 5.0  # seconds until nothing the run started is left
RUN_BOUND = 240.0  # seconds for any one run to reach its point, or to complete
PIPELINE = "faulty"
EPOCHS = 3


# make test's matrix: each point once, on one API or the other, each API meeting every signal.
# The run after `fit.mid-epoch` must train the same model (it checks the fit resumed), so that
# point is on the API whose chain has no `save.after-registry` (which trains a second model).
SHARES = {
    "temporary": ("download.mid-stream", "fit.mid-epoch", "save.before-registry", "report.before-write"),
    "server": ("decode.before-publish", "validate.before-record", "save.after-registry"),
}
assert sorted(SHARES["temporary"] + SHARES["server"]) == sorted(POINTS)


def full() -> bool:
    return os.environ.get("CIFAR_FAULT_MATRIX") == "full"


def rotation(offset: int, api: str) -> list[tuple[str, str]]:
    """(point, signal) for each point ``api``'s chain stops at (every point with
    CIFAR_FAULT_MATRIX=full, else its share), the signals rotating from ``offset``."""
    points = POINTS if full() else SHARES[api]
    return [(p, SIGNALS[(i + offset) % len(SIGNALS)]) for i, p in enumerate(points)]


def offsets(default: int) -> list[int]:
    """The rotations a path runs: all three with CIFAR_FAULT_MATRIX=full (every point on both
    APIs, with every signal: every cell of the matrix), else ``default`` alone (make test: each
    point once, on one of the two APIs, the two on different rotations: ``SHARES``)."""
    return [0, 1, 2] if full() else [default]


@dataclass
class Outcome:
    api: str
    point: str
    signal: str
    exit_code: int | None
    exit_seconds: float
    rerun_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def project(root: Path, url: str, sha256: str) -> Path:
    config = root / "pipelines.yaml"
    config.write_text(f"""\
data_dir: data
artifacts_dir: artifacts
pipelines:
  {PIPELINE}:
    dataset: {{format: cifar10-binary, source: '{url}', sha256: {sha256}, retries: 1}}
    training: {{epochs: {EPOCHS}, batch_size: 32, seed: 3}}
    keep_last: 2
    promote: {{min_value: 0}}  # a 1-epoch model on 300 images may not beat chance
""")
    return config


def archive(root: Path):
    """A tiny archive, big enough that its first streamed block is not the whole file."""
    return build_binary_archive(root / "archive", n_train=300, n_test=100)


def tagged(tag: str) -> list[int]:
    """Processes whose environment carries ``CIFAR_FAULT_TAG=tag`` (what one chain started)."""
    found = []
    needle = f"CIFAR_FAULT_TAG={tag}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(int(pid))
        except OSError:
            pass
    return found


def _deliver(proc, how: str) -> None:
    if how == "kill -9":
        os.kill(proc.pid, signal.SIGKILL)  # the process alone: what the OOM killer does
    else:
        os.killpg(proc.pid, signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT)


def _expected_exit(how: str) -> int:
    return {"kill -9": -9, "SIGTERM to the group": 143, "SIGINT to the group": 130}[how]


def verify_run_files(run_dir: Path) -> list[str]:
    """Why a published run's files do not verify against metadata.json's sha256s ([] if all do)."""
    from tasks.core.hashing import hash_file, hash_tree

    meta = json.loads((run_dir / "metadata.json").read_text())
    problems = []
    for name, sha in (meta.get("files") or {}).items():
        path = run_dir / name
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        got = (hash_tree(path) if path.is_dir() else hash_file(path)).sha256
        if got != sha:
            problems.append(f"{path} differs from its recorded sha256")
    return problems


class Chain:
    """One chain: a project, a loopback archive, the environment of its runs."""

    def __init__(self, root: Path, procs: Procs, server: FileServer, api: str,
                 home: Path, api_url: str | None):
        self.root, self.procs, self.server, self.api = root, procs, server, api
        built = archive(root)
        self.archive_name = built.path.name
        self.config = project(root, server.add(self.archive_name, built.path), built.sha256)
        self.tag = uuid.uuid4().hex
        self.slots = root / "slots"
        self.env = prefect_env(home, api_url, CIFAR_SLOT_DIR=str(self.slots), CIFAR_FAULT_TAG=self.tag,
                               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.outcomes: list[Outcome] = []
        self.logs: list[str] = []
        self.args: list[str] = []

    def start(self, point: str | None):
        env = dict(self.env, **({"CIFAR_FAULT_POINT": point} if point else {}))
        if point == SECOND_MODEL_FROM:  # a save point needs a model not yet saved: train another
            self.args = ["--set", "training.seed=4"]
        return self.procs.start(f"run-{point or 'final'}", [exe("cifar"), "run", PIPELINE, "--config",
                                                           str(self.config), *self.args], env, cwd=self.root)

    def fault(self, point: str, how: str) -> Outcome:
        t0 = time.monotonic()
        proc = self.start(point)
        proc.wait_for_output(f"fault point {point} reached", timeout=RUN_BOUND)
        reached = time.monotonic()
        if self.outcomes:
            self.outcomes[-1].rerun_seconds = round(reached - t0, 1)  # the last fault's rerun got here
        _deliver(proc, how)
        try:
            code = proc.popen.wait(EXIT_BOUND)
        except Exception:  # noqa: BLE001 - reported by the assertion below
            code = None
        took = time.monotonic() - reached
        out = proc.output()
        self.logs.append(out)
        outcome = Outcome(self.api, point, how, code, round(took, 2))
        self.outcomes.append(outcome)
        assert code == _expected_exit(how), f"{point} / {how}: exit {code} after {took:.1f} s\n{out[-3000:]}"
        if how != "kill -9":
            last = out.strip().splitlines()[-1]
            assert last.startswith("interrupted by ") and "stopped" in last, last
            assert "Traceback" not in out, out[-4000:]
            assert "Finished in state Crashed" in out, out[-2000:]  # the flow run is marked
        wait_until("nothing of the run left", lambda: not tagged(self.tag), GONE_BOUND)
        self.assert_no_slot_held()
        return outcome

    def finish(self) -> str:
        t0 = time.monotonic()
        proc = self.start(None)
        code = proc.popen.wait(RUN_BOUND)
        out = proc.output()
        self.logs.append(out)
        if self.outcomes:
            self.outcomes[-1].rerun_seconds = round(time.monotonic() - t0, 1)
        assert code == 0, out[-4000:]
        wait_until("nothing of the run left", lambda: not tagged(self.tag), GONE_BOUND)
        self.assert_no_slot_held()
        return out

    def assert_no_slot_held(self) -> None:
        from tasks.train.slots import holders, limit_name

        assert holders(limit_name(visible_devices=""), folder=self.slots) == []

    def assert_resumed_and_intact(self) -> None:
        """What the chain as a whole must show once its last run completed."""
        from tasks.core import runs
        from tasks.core.datacache import cache_problems

        points = [o.point for o in self.outcomes]
        if "download.mid-stream" in points:
            ranged = [r for r in self.server.hits(self.archive_name) if r.range and r.range != "bytes=0-"]
            assert ranged and ranged[0].status == 206, self.server.hits(self.archive_name)
        if "save.before-registry" in points:  # the next save finished the registry's update
            after = points.index("save.before-registry") + 1
            assert "the registry now names it" in self.logs[after], self.logs[after][-3000:]
        if "fit.mid-epoch" in points:
            after = points.index("fit.mid-epoch") + 1  # the run after the fault resumed the fit
            assert f"resuming after epoch 1/{EPOCHS}" in self.logs[after], self.logs[after][-3000:]
        artifacts, data = self.root / "artifacts", self.root / "data"
        caches = [d for d in (data / "datasets").iterdir() if d.is_dir() and not d.name.startswith(".")]
        assert caches and all(cache_problems(d) == [] for d in caches), caches
        published = runs.pipeline_runs(runs.pipeline_dir(artifacts, PIPELINE))
        assert published, "no run was published"
        keys = [run.metadata["cache_keys"]["store"] for run in published]
        assert len(set(keys)) == len(keys), f"one model saved as several runs: {keys}"
        for run in published:
            assert verify_run_files(run.dir) == [], run.dir
        champion = runs.champion_id(runs.pipeline_dir(artifacts, PIPELINE))
        assert champion in {run.run_id for run in published}, champion
        assert runs.damaged_runs(artifacts, PIPELINE) == {}
        latest = published[-1].dir
        assert (latest / "report.html").read_text().rstrip().endswith("</html>")


def table(outcomes: list[Outcome]) -> str:
    """The measured matrix as markdown rows (for docs/reliability.md)."""
    rows = ["| API | fault point | signal | exit code | exit after | rerun reached the next point or completed in |",
            "|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(f"| {o.api} | `{o.point}` | {o.signal} | {o.exit_code} | {o.exit_seconds:.2f} s | "
                    f"{o.rerun_seconds if o.rerun_seconds is not None else '-'} s |")
    return "\n".join(rows)


def record(outcomes: list[Outcome], name: str) -> None:
    """Append the rows to $CIFAR_FAULT_MATRIX_OUT/<name>.md when that is set (bench runs)."""
    out = os.environ.get("CIFAR_FAULT_MATRIX_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / f"{name}.md", "a") as f:
            f.write(table(outcomes) + "\n")
    print(table(outcomes))
