"""Where the training process's memory goes: RSS at each step of a short fit on a cached dataset.

    .venv/bin/python -m bench.probe_train_rss DATASET_DIR [STEPS]   # e.g. data/datasets/<fingerprint>

Prints VmRSS, its high-water mark (VmHWM) and the anonymous / file-backed parts from
/proc/self/status (Linux): at start, after importing TensorFlow, after building the training and
validation datasets with ``tasks.train.inputs.make_dataset`` over the memory-mapped cache, every 200
steps of ``fit`` (seed_cnn, batch 32, the notebook's optimizer), and after it. A probe, not a
benchmark: run it before and after a change to the input pipeline and compare the rows.
"""

from __future__ import annotations

import os
import re
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rss(tag: str) -> None:
    status = open("/proc/self/status").read()

    def mb(key: str) -> int:
        return int(re.search(key + r":\s+(\d+)", status).group(1)) // 1024

    print(f"{tag:<16} RSS {mb('VmRSS'):>5} MB  high-water {mb('VmHWM'):>5} MB  "
          f"anon {mb('RssAnon'):>5} MB  file {mb('RssFile'):>5} MB", flush=True)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    steps = int(argv[1]) if len(argv) > 1 else 600
    rss("start")
    import keras

    rss("tf imported")
    from tasks.core.datacache import load_dataset
    from tasks.train.config import OptimizerConfig
    from tasks.train.fit import make_optimizer
    from tasks.train.inputs import make_dataset
    from tasks.train.models import build_model

    data = load_dataset(argv[0])
    classes = len(data.classes)
    train = make_dataset(data.x_train, data.y_train, classes, 32, shuffle=True, seed=42)
    val = make_dataset(data.x_test, data.y_test, classes, 32)
    rss("datasets made")
    model = build_model("seed_cnn", data.x_train.shape[1:], classes)
    model.compile(optimizer=make_optimizer(OptimizerConfig()), loss="categorical_crossentropy",
                  metrics=["accuracy"])

    class Every200(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch % 200 == 0:
                rss(f"step {batch}")

    t0 = time.perf_counter()
    model.fit(train, validation_data=val.take(50), epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[Every200()])
    print(f"fit: {time.perf_counter() - t0:.1f} s, {(time.perf_counter() - t0) / steps * 1000:.1f} ms/step")
    rss("after fit")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
