"""Live curves: TensorBoard event files of every training, and reading them back.

Keras's own ``TensorBoard`` callback writes them (TensorFlow writes event files without the
``tensorboard`` package, which TF 2.21 no longer brings; the project depends on it for the viewer
and the HParams, ``tasks.train.hparams``): loss and accuracy per epoch for the training split
(``train/``) and the test split (``validation/``), the learning rate per epoch, and the model's
graph. They go to ``<key>.work/tensorboard/`` while the model trains (a resumed training appends
to them), into the model folder at the commit, and from there into each run folder, so
``tensorboard --logdir artifacts`` shows every run side by side.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path

from tasks.core.files import fsync_dir

TENSORBOARD = "tensorboard"  # the folder's name, in the work dir, the model folder and a run folder


class _Summaries:
    """``tf.summary`` as Keras's callback uses it, with ``scalar`` written by TensorFlow itself.

    ``tf.summary.scalar`` in TF 2.21 is only a stub that imports ``tensorboard``'s implementation
    and raises ``TBNotInstalledError`` without it. Its implementation is one ``tf.summary.write``
    of the value under the ``scalars`` plugin's metadata; this does the same (what the viewer
    reads is identical), so the logs are written whether or not the viewer is installed.
    """

    def __getattr__(self, name):
        import tensorflow as tf

        return getattr(tf.summary, name)

    @staticmethod
    def scalar(name, data, step=None, description=None):
        import tensorflow as tf

        metadata = tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        metadata.summary_description = description or ""
        with tf.summary.experimental.summary_scope(name, "scalar_summary", values=[data, step]) as (tag, _):
            return tf.summary.write(tag=tag, tensor=tf.cast(data, tf.float32), step=step, metadata=metadata)


def tensorboard_callback(log_dir: str | os.PathLike):
    """Keras's TensorBoard callback: per-epoch loss, accuracy and learning rate for ``train/``
    and ``validation/``, and the model's graph; no profiler."""
    import keras

    class TensorBoard(keras.callbacks.TensorBoard):
        @property
        def summary(self):
            return _Summaries()

    return TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=True, update_freq="epoch",
                       profile_batch=0)


def copy_logs(model_folder: str | os.PathLike, run_folder: str | os.PathLike) -> Path | None:
    """Copy the model folder's event files into ``<run_folder>/tensorboard/`` (under a dot-name,
    then renamed into place); None when the model has none. A run that has them keeps them."""
    source, dest = Path(model_folder) / TENSORBOARD, Path(run_folder) / TENSORBOARD
    if not source.is_dir():
        return None
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{TENSORBOARD}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def read_events(log_dir: str | os.PathLike) -> dict[str, dict]:
    """``{"train": {"epoch_loss": [(0, 2.31), ...], ...}, "validation": {...}}``: the scalars of
    every event file under ``log_dir``, read with TensorFlow alone (no viewer needed); the key
    ``"graphs"`` counts the op graphs and Keras model graphs found."""
    import tensorflow as tf

    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    graphs = {"graph": 0, "keras_model": 0}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        split = path.parent.name
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            if event.graph_def:
                graphs["graph"] += 1
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "graph_keras_model":
                    graphs["keras_model"] += 1
                    continue
                if value.HasField("simple_value"):
                    number = value.simple_value
                elif value.HasField("tensor") and not value.tensor.string_val:
                    number = float(tf.make_ndarray(value.tensor))
                else:
                    continue
                out[split][value.tag].append((int(event.step), float(number)))
    result = {split: {tag: sorted(points) for tag, points in tags.items()} for split, tags in out.items()}
    result["graphs"] = graphs  # type: ignore[assignment]
    return result
