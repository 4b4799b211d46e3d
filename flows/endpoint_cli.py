"""``cifar endpoint``: serve pipelines' champions over HTTP, speaking TF Serving's REST API.

Like ``cifar predict`` it never imports Prefect, Keras or TensorFlow: the model is the run's LiteRT
flatbuffer, so the service is ready in about a second. FastAPI and uvicorn are imported when the
command runs, not when the CLI loads. The service itself: ``flows/endpoint.py``.
"""

from __future__ import annotations

import logging
import sys

from flows.predict_cli import prediction_settings
from tasks.core.errors import ConfigError


def add_endpoint_parser(sub, common) -> None:
    cmd = sub.add_parser("endpoint", help="serve pipelines' champions over HTTP (TF Serving's REST API: "
                                          "POST /v1/models/NAME:predict), hot-swapped when a new one is promoted")
    cmd.add_argument("--pipeline", action="append", dest="pipelines", metavar="NAME",
                     help="serve this pipeline's champion at /v1/models/NAME (repeatable; default: train, "
                          "or the one pipeline that has runs)")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    cmd.add_argument("--port", type=int, default=8501, help="port (default: %(default)s, TF Serving's REST port)")
    cmd.add_argument("--max-batch", type=int, default=256, metavar="N",
                     help="images per scoring batch at most (default: %(default)s)")
    cmd.add_argument("--batch-wait-ms", type=float, default=2.0, metavar="MS",
                     help="how long a batch waits for requests already arriving (default: %(default)s)")
    cmd.add_argument("--threads", type=int, default=None, metavar="N",
                     help="LiteRT threads per model for batches of more than 16 images (default: the "
                          "machine's cores; smaller batches use one thread)")
    cmd.add_argument("--access-log", action="store_true", help="log every request (default: one line per batch)")
    common(cmd)


def cmd_endpoint(args) -> int:
    import uvicorn

    from flows.endpoint import EndpointConfig, create_app
    from tasks.predict.resolve import default_pipeline, pipelines_with_runs

    settings = prediction_settings(args.config, args.overrides, command="cifar endpoint")
    artifacts = settings.artifacts_dir
    pipelines = list(dict.fromkeys(args.pipelines or [default_pipeline(artifacts)]))
    on_disk = pipelines_with_runs(artifacts)
    unknown = [p for p in pipelines if p not in settings.pipelines and p not in on_disk]
    if unknown:  # a typo would otherwise serve 503s forever, waiting for a champion
        raise ConfigError([f"--pipeline {p}: no such pipeline in the file, and no runs of it under {artifacts}; "
                           f"pipelines: {', '.join(settings.pipelines)}" for p in unknown], str(settings.config_path))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    config = EndpointConfig(max_batch=args.max_batch, max_wait=args.batch_wait_ms / 1000, threads=args.threads)
    app = create_app(artifacts, pipelines, config=config)
    print(f"serving {', '.join(pipelines)} from {artifacts} at http://{args.host}:{args.port}/v1/models/NAME",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, access_log=args.access_log, log_level="info",
                timeout_graceful_shutdown=10)
    return 0
