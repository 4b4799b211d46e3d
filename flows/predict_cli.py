"""``cifar predict``: the classes of image files, folders or archives, from a run's model.

Fast by what it leaves out: it never imports Prefect, Keras or TensorFlow (the model is the
run's LiteRT flatbuffer; ``tasks.predict.engine``). It reads the pipelines file as every command
does (``flows.config``, which loads none of them) and uses only its ``artifacts_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from flows.config import load_settings, parse_set
from tasks.core.errors import ConfigError


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return n


def _probability(value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {value!r}")
    return p


def add_predict_parser(sub, common) -> None:
    cmd = sub.add_parser("predict", help="predict the classes of images (files, folders, archives) "
                                         "with a run's model: the champion of train by default")
    cmd.add_argument("paths", nargs="+", metavar="PATH",
                     help="PNG/JPEG files (any size, colour or greyscale), folders of them, or "
                          ".tar/.tar.gz/.zip archives of them")
    cmd.add_argument("--pipeline", metavar="NAME",
                     help="whose model (default: train, or the one pipeline that has runs)")
    cmd.add_argument("--run", default="champion", metavar="champion|latest|RUN_ID",
                     help="which run of the pipeline (default: %(default)s)")
    cmd.add_argument("--top", type=_positive, default=3, metavar="K",
                     help="classes per image, best first (default: %(default)s)")
    cmd.add_argument("--min-prob", type=_probability, default=None, metavar="P",
                     help="mark a prediction whose top probability is under P (0-1) as uncertain: "
                          "none of the classes, as far as the model can tell")
    cmd.add_argument("--json", action="store_true", help="print a JSON array of records for scripts "
                                                         "(each names the run and the model's sha256)")
    common(cmd)


def prediction_settings(config: str | os.PathLike, overrides: list[str], command: str = "cifar predict"):
    """The pipelines file as ``flows.config.load_settings`` reads it for every command. No
    ``--set`` but ``artifacts_dir``: no other setting applies to predictions."""
    sets = parse_set(overrides)
    for key in sets:
        if key != "artifacts_dir":
            raise ConfigError([(f"--set {key}: {command} reads only artifacts_dir from the config "
                                "(--set artifacts_dir=DIR); other settings do not apply to predictions")],
                              "command line")
    return load_settings(config, sets)


def predict_artifacts_dir(config: str | os.PathLike, overrides: list[str], command: str = "cifar predict") -> Path:
    """``artifacts_dir`` of the pipelines file (or ``--set artifacts_dir=DIR``)."""
    return prediction_settings(config, overrides, command).artifacts_dir


def _emit(items, as_json: bool, model=None, min_prob: float | None = None) -> tuple[int, int]:
    """Print each prediction (stdout) and each failure (stderr, and a record with ``--json``);
    returns (files, failed)."""
    from tasks.predict.scoring import Failure, as_line, as_record

    failed = n = 0
    if as_json:
        print("[")
    for n, item in enumerate(items, 1):
        if isinstance(item, Failure):
            failed += 1
            print(f"error: {item.error}", file=sys.stderr)
        if as_json:
            print(("  " if n == 1 else ", ") + json.dumps(as_record(item, model, min_prob)))
        elif not isinstance(item, Failure):
            print(as_line(item, min_prob))
    if as_json:
        print("]")
    return n, failed


def cmd_predict(args) -> int:
    from tasks.predict.engine import Scorer
    from tasks.predict.inputs import iter_sources
    from tasks.predict.resolve import resolve_model
    from tasks.predict.scoring import predict_sources

    ref = resolve_model(predict_artifacts_dir(args.config, args.overrides), args.pipeline, args.run)
    scorer = Scorer(ref)
    h, w, c = scorer.input_shape
    print(f"model: {ref.pipeline} run {ref.run_id}{' (champion)' if ref.champion else ''}, "
          f"{w}x{h}x{c} input, {len(scorer.classes)} classes, sha256 {ref.model_sha256}", file=sys.stderr)
    items = predict_sources(scorer, iter_sources(args.paths), args.top,
                            progress=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        total, failed = _emit(items, args.json, ref, args.min_prob)
        sys.stdout.flush()
    except BrokenPipeError:  # `cifar predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if failed:
        print(f"{failed} of {total} file(s) could not be scored (see the errors above); "
              "the others were.", file=sys.stderr)
    return 1 if failed else 0
