"""How fast `cifar predict` is (issue 14: 10 images well under TensorFlow's import time; 10,000
images streamed in batches with a progress line).

    .venv/bin/python -m bench.bench_predict --config PIPELINES.yaml [--pipeline NAME] [--repeat 3]

Needs a trained run under the config's artifacts_dir (any, e.g. `cifar run smoke-jpeg --set
training.epochs=1`). Inputs, extracted once into bench/out/predict/ (git-ignored) from the real
CIFAR-10 JPEGs in /work/shared/datasets/cifar10-jpeg.tar.gz: the 10,000 test images as files
(test/<class>/NNNN.jpg) and the first 10 of them in a folder of their own.

Every timing is a fresh process, as a user runs it, in the same run (so on the same load):
- ``python -c "import tensorflow"``: the bar;
- ``cifar predict FOLDER_OF_10``: the whole command, wall time;
- the same 10 images through the SavedModel in plain TensorFlow (``tf.saved_model.load``), what
  `cifar predict` would cost if it used it;
- ``cifar predict test/ --json`` on 10,000 images: throughput, progress lines on stderr, and,
  when the run was evaluated on the full test split, agreement with its predictions.npz.
Results go to bench/out/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "predict"
JPEG_TARBALL = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")
SAVEDMODEL_10 = r"""
import sys, numpy as np
from pathlib import Path
from PIL import Image
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(sys.argv[2]).iterdir())])
print(model.serve(tf.constant(x))["class_name"].numpy()[:3])
"""


def extract_test_images(tarball: Path = JPEG_TARBALL) -> tuple[Path, Path]:
    """bench/out/predict/test/<class>/*.jpg (10,000 files) and few10/ (the first 10)."""
    from tasks.core.members import safe_member_name

    test, few = WORK / "test", WORK / "few10"
    if not (WORK / ".complete").exists():
        with tarfile.open(tarball, "r:gz") as tf:
            for m in tf:
                name = safe_member_name(m.name, str(tarball))
                if m.isfile() and name.startswith("test/") and name.lower().endswith(".jpg"):
                    dest = WORK / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(tf.extractfile(m).read())
        (WORK / ".complete").touch()
    if not few.exists():
        few.mkdir(parents=True)
        for p in sorted(test.rglob("*.jpg"))[:10]:
            (few / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    return test, few


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return seconds, r


def agreement(records: list[dict], run_dir: Path) -> dict | None:
    """CLI predictions vs the run's predictions.npz, when it was evaluated on the same 10,000
    test images (the cache's test split is in class, then file-name order: so is the folder)."""
    import numpy as np

    with np.load(run_dir / "predictions.npz") as z:
        y_pred, y_true = z["y_pred"], z["y_true"]
    if len(y_pred) != len(records):
        return None
    classes = json.loads((run_dir / "classes.json").read_text())
    ours = np.array([classes.index(r["class"]) for r in records])
    return {"same_class": int((ours == y_pred).sum()), "images": len(records),
            "accuracy_cli": float((ours == y_true).mean()), "accuracy_recorded": float((y_pred == y_true).mean())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="pipelines file whose artifacts_dir holds a run")
    ap.add_argument("--pipeline", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    test, few = extract_test_images()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    cli = [sys.executable, "-m", "flows.cli", "predict", "--config", args.config]
    cli += ["--pipeline", args.pipeline] if args.pipeline else []

    from flows.config import load_settings
    from tasks.predict.resolve import resolve_model

    ref = resolve_model(load_settings(args.config).artifacts_dir, args.pipeline)
    tf_import, predict10, savedmodel10 = [], [], []
    for _ in range(args.repeat):
        tf_import.append(timed([sys.executable, "-c", "import tensorflow"], env)[0])
        predict10.append(timed([*cli, str(few)], env)[0])
        savedmodel10.append(timed([sys.executable, "-c", SAVEDMODEL_10, f"{ref.path}/savedmodel", str(few)], env)[0])
    seconds, r = timed([*cli, str(test), "--json"], env)
    records = json.loads(r.stdout)
    progress = [line for line in r.stderr.splitlines() if line.startswith("scored ")]
    result = {
        "run": f"{ref.pipeline}/{ref.run_id}",
        "import_tensorflow_s": [round(s, 2) for s in tf_import],
        "predict_10_s": [round(s, 2) for s in predict10],
        "savedmodel_10_s": [round(s, 2) for s in savedmodel10],
        "predict_10_vs_tf_import": round(statistics.median(predict10) / statistics.median(tf_import), 3),
        "predict_10000_s": round(seconds, 2),
        "predict_10000_images_per_s": round(len(records) / seconds, 1),
        "progress_lines": len(progress),
        "last_progress": progress[-1] if progress else None,
        "agreement_with_recorded": agreement(records, Path(ref.path)),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "predict.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
