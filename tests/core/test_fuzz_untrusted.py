"""Issue 29's fuzz test: generated hostile pipelines files fed to `cifar check` (the CLI's own
``main``) and generated hostile archives and folders fed to `cifar predict`'s input path
(``iter_sources``, then each file decoded into the model's input and formatted as the CLI and
the CSV show it: ``predict_sources`` with a constant model standing in for the LiteRT call,
which needs a trained run). Each half runs in
one subprocess under RLIMIT_AS (2 GiB) and a timeout: a blow-up, a hang or a traceback fails.

Default: 80 configs + 160 archives/folders (a few seconds, most of it scanning 200,000
brackets). ``CIFAR_FUZZ_CASES=N`` runs N
of each; ``CIFAR_FUZZ_SEED`` changes the draw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = int(os.environ.get("CIFAR_FUZZ_CASES", "0")) or None  # None: the defaults below
CONFIG_CASES, ARCHIVE_CASES = CASES or 80, CASES or 160
SEED = int(os.environ.get("CIFAR_FUZZ_SEED", "29"))
LIMIT = 2 << 30

CONFIG_FUZZ = r'''
import contextlib, io, json, os, random, sys, time
from pathlib import Path
from flows.cli import main

rng = random.Random(SEED)
root = Path(sys.argv[1])
KEYS = ["data_dir", "artifacts_dir", "train_slots", "pipelines", "name", "training", "epochs",
        "batch_size", "dataset", "source", "model", "keep_last", "schedule", "cron", "deploy", "env",
        "<<", "report", "sample_images", "optimizer", "learning_rate", "recipe"]
SCALARS = ["1", "-1", "0", "1e23", "100000000000000000000000", "0x10", "yes", "null", "~", "nan", ".inf",
           "'x'", "\"\\u202e\"", "-rf", "[]", "{}", "\"http://u:pw@h/x?sig=1\"", "'" + "a" * 300 + "'"]

def bomb():
    n, fan = rng.randint(3, 12), rng.randint(2, 12)
    out = [f"a0: &a0 [" + ", ".join(["x"] * fan) + "]"]
    for i in range(1, n):
        out.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i-1}"] * fan) + "]")
    return "\n".join(out) + f"\npipelines:\n  p:\n    description: *a{n-1}\n"

def mapping(depth):
    if depth > 4 or rng.random() < 0.3:
        return rng.choice(SCALARS)
    items = [f"{rng.choice(KEYS)}: {mapping(depth + 1)}" for _ in range(rng.randint(0, 4))]
    return "{" + ", ".join(items) + "}"

def case(i):
    kind = i % 8
    if kind == 0:
        return bomb()
    if kind == 1:
        d = rng.randint(10, 200_000)
        return "pipelines:\n  a: {description: " + "[" * d + "]" * rng.choice([d, d - 1, 0]) + "}\n"
    if kind == 2:
        return "x: &r [1, *r]\npipelines:\n  a: {}\n" if rng.random() < 0.5 else "p: &m {a: *m}\n"
    if kind == 3:
        name = rng.choice(["a", "-rf", "a" * rng.randint(60, 400), "two words", "a/b", "..", "\x1b[2J"])
        return f"pipelines:\n  {json.dumps(name)}: {{}}\n  {json.dumps(name)}: {{}}\n"
    if kind == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400))).decode("latin-1")
    if kind == 5:
        return "pipelines:\n  a: " + mapping(0) + "\n"
    if kind == 6:
        return "pipelines:\n  a:\n    training: {epochs: %s, batch_size: %s}\n" % (
            rng.choice(SCALARS), rng.choice(SCALARS))
    return mapping(0)

worst, T0 = 0.0, time.monotonic()
bad = []
for i in range(N):
    text = case(i)
    path = root / f"c{i}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check", "--config", str(path)])
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = f"{type(exc).__name__}: {str(exc)[:200]}"
    took = time.monotonic() - t0
    worst = max(worst, took)
    if code not in (0, 2) or "Traceback" in err.getvalue() or took > 5:
        bad.append({"case": i, "code": str(code), "took": took, "err": err.getvalue()[-300:], "text": text[:200]})
print(json.dumps({"cases": N, "bad": bad, "worst_s": worst, "total_s": time.monotonic() - T0}))
'''

ARCHIVE_FUZZ = r'''
import io, json, os, random, sys, tarfile, time, zipfile, gzip, csv
from pathlib import Path
from tasks.predict.inputs import iter_sources
from tasks.predict.scoring import as_line, as_record, Failure, predict_sources
from tasks.predict.batch import csv_row


class ConstantModel:
    """Stands in for the LiteRT model only (the one part left out): every image is cat."""
    input_shape, classes = (8, 8, 3), ["cat", "dog"]

    def probabilities(self, x):
        import numpy as np
        return np.tile(np.float32([0.75, 0.25]), (len(x), 1))

rng = random.Random(SEED)
root = Path(sys.argv[1])
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fea7d6a0fe0000000049454e44ae426082")
NAMES = ["a.png", "../up.png", "/abs.png", "\x1b[31mred.png", "ok.png\rcat 0.99", "=HYPERLINK(1).png",
         "+cmd|x.png", "d/" * 50 + "deep.png", "x" * 300 + ".png", "caf\udce9.png", "dir/", "z.jpg"]

def name():
    return rng.choice(NAMES)

def tar_case(path, i):
    mode = rng.choice(["w", "w:gz", "w:bz2", "w:xz"])
    with tarfile.open(path, mode, format=rng.choice([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])) as tf:
        for _ in range(rng.randint(0, 40)):
            n = name().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            info = tarfile.TarInfo(n)
            r = rng.random()
            if r < 0.1:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            elif r < 0.15:
                info.type = tarfile.FIFOTYPE
                tf.addfile(info)
            else:
                data = rng.choice([PNG, b"", bytes(rng.randint(0, 200_000)), PNG[: rng.randint(0, len(PNG))]])
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    if rng.random() < 0.2:  # truncated or bit-flipped
        raw = bytearray(path.read_bytes())
        if raw and rng.random() < 0.5:
            raw[rng.randrange(len(raw))] ^= 0xFF
        path.write_bytes(bytes(raw[: rng.randint(0, len(raw))]))

def huge_header(path):
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = rng.choice([tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE]), rng.randint(2, 64) << 20
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(format=tarfile.GNU_FORMAT)[:512])
        for _ in range(info.size >> 20):
            f.write(bytes(1 << 20))

def zip_case(path):
    with zipfile.ZipFile(path, "w", rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])) as zf:
        for _ in range(rng.randint(0, 30)):
            n = name().encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            zf.writestr(n, rng.choice([PNG, b"", bytes(rng.randint(0, 100_000))]))
    if rng.random() < 0.3:
        raw = path.read_bytes()
        path.write_bytes(raw[: rng.randint(0, len(raw))])

def folder_case(path):
    path.mkdir()
    for j in range(rng.randint(0, 10)):
        n = rng.choice(["a.png", "b.jpg", "c.tar", "d", "e.zip"]) + str(j)
        p = path / (n if "." not in n[-5:] else n)
        r = rng.random()
        if r < 0.2:
            os.mkfifo(path / f"fifo{j}.png")
        elif r < 0.3:
            (path / f"zero{j}.png").symlink_to("/dev/zero")
        elif r < 0.4:
            os.mkfifo(path / f"fifo{j}.tar")
        else:
            (path / f"f{j}.png").write_bytes(rng.choice([PNG, bytes(1000), b"junk"]))
    try:
        (path / os.fsdecode(b"caf\xe9.png")).write_bytes(PNG)
    except OSError:
        pass

worst, T0 = 0.0, time.monotonic()
bad = []
for i in range(N):
    kind = i % 5
    path = root / f"a{i}" / ["x.tar", "x.tar.gz", "x.zip", "folder", "x.png"][kind]
    path.parent.mkdir()
    if kind in (0, 1):
        huge_header(path) if rng.random() < 0.1 else tar_case(path, i)
    elif kind == 2:
        zip_case(path)
    elif kind == 3:
        folder_case(path)
    else:
        path.write_bytes(rng.choice([PNG, b"", bytes(rng.randint(0, 50_000))]))
    t0 = time.monotonic()
    try:
        n = 0
        for item in predict_sources(ConstantModel(), iter_sources([path]), 2, batch=7):
            json.dumps(as_record(item), ensure_ascii=False).encode("utf-8")
            line = item.error if isinstance(item, Failure) else as_line(item)
            assert not any(c in line for c in "\r\n\x1b"), line
            line.encode("utf-8")
            row = csv_row(item)
            assert not row["file"].startswith(("=", "+", "-", "@")), row
            assert not any(c in row["file"] for c in "\r\n\x1b"), row
            n += 1
        code = 0
    except BaseException as exc:
        code = f"{type(exc).__name__}: {str(exc)[:200]}"
    took = time.monotonic() - t0
    worst = max(worst, took)
    if code != 0 or took > 5:
        bad.append({"case": i, "kind": kind, "code": code, "took": took})
print(json.dumps({"cases": N, "bad": bad, "worst_s": worst, "total_s": time.monotonic() - T0}))
'''


def _run(script: str, tmp_path: Path, cases: int) -> dict:
    timeout = 60 + cases * 0.5
    body = (f"import resource\nresource.setrlimit(resource.RLIMIT_AS, ({LIMIT}, {LIMIT}))\n"
            f"SEED, N = {SEED}, {cases}\n" + textwrap.dedent(script))
    r = subprocess.run([sys.executable, "-c", body, str(tmp_path)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"{cases} cases in {got['total_s']:.1f} s, the slowest {got['worst_s']:.2f} s")
    return got


@pytest.mark.subprocess
def test_fuzzed_configs_never_crash_hang_or_blow_up_cifar_check(tmp_path):
    got = _run(CONFIG_FUZZ, tmp_path, CONFIG_CASES)
    assert got["cases"] == CONFIG_CASES and got["bad"] == [], got["bad"][:5]


@pytest.mark.subprocess
def test_fuzzed_archives_and_folders_never_crash_hang_or_blow_up_predict_inputs(tmp_path):
    got = _run(ARCHIVE_FUZZ, tmp_path, ARCHIVE_CASES)
    assert got["cases"] == ARCHIVE_CASES and got["bad"] == [], got["bad"][:5]
