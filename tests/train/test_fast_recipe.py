"""The fast recipe (issue 13): airbench in Keras and its training recipe, on tiny data.

Real Keras/TensorFlow: the whitening stem, dirac init, the schedule, the BN-bias rate, lookahead
(math, BN statistics, resume after kill -9), alternating flips, integer translations and the
runtime choice. Test-time augmentation (the store's evaluation) is in
tests/store/test_evaluation.py, the recipe's whole flow run in tests/flows/test_flow.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.core.kernels import _xla_kernels, fused_kernels
from tasks.train import recipe as recipes
from tasks.train.airbench import (
    build_airbench,
    dirac_kernel,
    patch_covariance,
    whitening_kernel,
)
from tasks.train.config import RecipeConfig, TrainingConfig, TrainingError
from tasks.train.devices import cpu_has_bf16, resolve_runtime
from tasks.train.inputs import flip_mask, recipe_dataset, translate_batch
from tasks.train.models import build_model

ROOT = Path(__file__).resolve().parents[2]
TINY = RecipeConfig(widths=(8, 16, 16), whiten_images=40)


def smooth_images(n=24, size=12, c=3, seed=0):
    """Correlated pixels (neighbours alike, channels alike): a covariance far from identity."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, size + 1, size + 1, 1)).cumsum(1).cumsum(2) / size
    return (base[:, 1:, 1:] + 0.1 * rng.normal(size=(n, size, size, c))).astype(np.float32)


# --------------------------------------------------------------------------- the network
def test_whitening_kernel_whitens_the_patches_largest_eigenvalue_first():
    x = smooth_images()
    kernel, values = whitening_kernel(x, 2, eps=5e-4)
    assert kernel.shape == (2, 2, 3, 24) and np.all(np.diff(values) <= 0)  # largest first
    patches = np.stack([x[:, a:a + 11, b:b + 11, :] for a in (0, 1) for b in (0, 1)], axis=3)
    patches = patches.reshape(-1, 12).astype(np.float64)  # (row, col, channel) order, as Keras's kernel
    cov = patches.T @ patches / len(patches)
    assert np.allclose(cov, patch_covariance(x), atol=1e-6)
    assert not np.allclose(cov, np.diag(np.diag(cov)), atol=0.05)  # the test data is correlated
    w = kernel.reshape(12, 24)
    assert np.allclose(w[:, 12:], -w[:, :12])  # the negations
    out_cov = w[:, :12].T @ cov @ w[:, :12]
    assert np.allclose(out_cov, np.diag(values / (values + 5e-4)), atol=1e-4)  # whitened: ~identity
    assert np.diag(out_cov)[0] > 0.99  # the strongest directions come out at unit variance


def test_stem_of_the_model_whitens_its_inputs_frozen_with_a_trainable_bias():
    import keras

    x = smooth_images(size=16)
    model = build_airbench((16, 16, 3), 10, TINY, whiten_images=x)
    stem = model.get_layer("whiten")
    out = keras.Model(model.input, stem.output).predict(x, verbose=0)[..., :12].reshape(-1, 12)
    cov = out.T.astype(np.float64) @ out / len(out)  # the bias starts at zero: uncentred = raw
    _, values = whitening_kernel(x)
    assert np.allclose(cov, np.diag(values / (values + 5e-4)), atol=2e-3)
    assert np.allclose(cov, np.eye(12), atol=0.1)  # identity-ish
    trainable = {v.path for v in model.trainable_weights}
    assert stem.bias.path in trainable and stem.kernel.path not in trainable
    plain = build_airbench((16, 16, 3), 10, RecipeConfig(widths=(8, 16, 16), whiten=False), x)
    assert plain.get_layer("whiten").kernel.path in {v.path for v in plain.trainable_weights}


def test_dirac_makes_the_first_filters_the_identity_on_pytorch_scaled_init():
    k = dirac_kernel(np.full((3, 3, 4, 6), 0.5, np.float32))
    assert np.all(k[1, 1, np.arange(4), np.arange(4)] == 1) and k[..., :4].sum() == 4
    assert np.all(k[..., 4:] == 0.5)
    model = build_airbench((16, 16, 3), 10, TINY, whiten_images=smooth_images(size=16))
    conv1, conv2 = model.get_layer("block1_conv1"), model.get_layer("block1_conv2")
    w = conv1.kernel.numpy()  # 24 -> 8: all 8 filters copy the first 8 stem channels
    assert np.array_equal(w, dirac_kernel(w))
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 7, 7, 8)).astype(np.float32)
    assert np.allclose(conv2(h).numpy(), h, atol=1e-6)  # 8 -> 8: the identity
    rest = model.get_layer("block2_conv1").kernel.numpy()[..., 8:]  # 8 -> 16: 8 random filters
    bound = 1 / np.sqrt(3 * 3 * 8)
    assert np.abs(rest).max() <= bound and np.abs(rest).max() > 0.8 * bound  # U(+-1/sqrt(fan_in))
    no_dirac = build_airbench((16, 16, 3), 10, RecipeConfig(widths=(8, 16, 16), dirac=False))
    assert not np.array_equal(no_dirac.get_layer("block1_conv2").kernel.numpy(),
                              dirac_kernel(no_dirac.get_layer("block1_conv2").kernel.numpy()))


def test_the_model_adapts_to_the_data():
    model = build_model("airbench", (28, 28, 1), 5, recipe=TINY, whiten_images=smooth_images(c=1, size=28))
    assert model.output_shape == (None, 5) and model.get_layer("whiten").filters == 8  # 2 * C * 4
    bn = model.get_layer("block2_bn1")
    assert (bn.momentum, bn.scale, bn.center) == (0.6, False, True) and bn.epsilon <= 1e-5
    assert model.get_layer("head").use_bias is False
    assert model.get_layer("logits").scale == pytest.approx(1 / 9)


def test_the_model_keeps_float32_logits_under_bfloat16():
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        mixed = build_model("airbench", (16, 16, 3), 10, recipe=TINY)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert mixed.get_layer("block1_conv1").compute_dtype == "bfloat16" and mixed.output.dtype == "float32"


def test_images_smaller_than_9x9_are_refused():
    with pytest.raises(TrainingError, match=r"cannot take images of shape \(8, 8, 3\).*at least 9x9"):
        build_model("airbench", (8, 8, 3), 10, recipe=TINY)


def test_fused_kernels_compute_what_the_stock_layers_do_and_the_saved_model_is_stock(tmp_path):
    import keras
    import tensorflow as tf

    model = build_model("airbench", (16, 16, 3), 10, recipe=TINY, whiten_images=smooth_images(size=16))
    # Textured images, as photographs are: on near-constant ones the last block's batch variance
    # (8 images of 2x2 pixels) is so small that both gradients are sums of near-equal terms, and
    # another order of float sums (oneDNN's AVX2 kernels against its AVX-512 ones) moves the fused
    # one by percents (stock: 1e-4 of a float64 reference there, fused: 9e-2; here both 4e-6).
    x = np.random.default_rng(1).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for i, bn in enumerate(bns):  # non-trivial statistics and biases to start from
        bn.moving_mean.assign(np.full(bn.moving_mean.shape, 0.1 * i, np.float32))
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 1.0 + 0.2 * i, np.float32))
        bn.beta.assign(np.linspace(-0.5, 0.5, bn.beta.shape[0]).astype(np.float32))
    start = [v.numpy() for v in model.non_trainable_weights]

    def one_pass():
        for v, value in zip(model.non_trainable_weights, start):
            v.assign(value)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = tf.reduce_mean(out * tf.range(10, dtype=out.dtype))
        grads = [g.numpy() for g in tape.gradient(loss, model.trainable_weights)]
        stats = [v.numpy() for v in model.non_trainable_weights]
        return [out.numpy(), model(x, training=False).numpy(), *grads, *stats]

    stock = one_pass()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=recipes.make_loss(TINY, True))
    with fused_kernels(model) as swapped:
        assert swapped == 7 + 6  # GELUs: the stem's and two per block; batch norms: two per block
        assert model.get_layer("block2_gelu1").activation is not keras.activations.gelu
        assert "call" in vars(model.get_layer("block2_bn1"))  # this layer's own call, not the class's
        fused = one_pass()
        assert _xla_kernels()[0].experimental_get_tracing_count() > 0  # the layers ran through it
        traced = tf.function(lambda t: model(t, training=True)).get_concrete_function(
            tf.TensorSpec(x.shape, tf.float32)).graph
        assert sum(op.type == "FusedBatchNormV3" for op in traced.get_operations()) == 6  # and these through it
        model.fit(x, keras.utils.to_categorical(np.arange(8) % 10, 10), epochs=1, verbose=0)
    assert len(fused) == len(stock)
    for got, want in zip(fused, stock):  # outputs (train, inference), gradients, BN statistics
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert model.get_layer("block2_gelu1").activation is keras.activations.gelu
    assert "call" not in vars(model.get_layer("block2_bn1"))
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_layer("whiten_gelu").get_config()["activation"] == "gelu"
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the recipe's numbers
def test_schedule_values_at_known_steps():
    r = RecipeConfig()
    total = 480  # 10 epochs of 48 steps; warm-up int(480 * 0.23) = 110 steps
    assert recipes.lr_factor(0, total, r) == pytest.approx(0.2)
    assert recipes.lr_factor(55, total, r) == pytest.approx(0.6)
    assert recipes.lr_factor(110, total, r) == pytest.approx(1.0)
    assert recipes.lr_factor(295, total, r) == pytest.approx(1 - 0.93 / 2)
    assert recipes.lr_factor(480, total, r) == pytest.approx(0.07)
    assert recipes.lr_factor(300, total, RecipeConfig(schedule=False)) == 1.0
    assert recipes.peak_learning_rate(r, 1024) == 1.5 and recipes.peak_learning_rate(r, 512) == 0.75
    from tasks.train.recipe_keras import WarmupLinearDecay

    schedule = WarmupLinearDecay(1.5, total, 0.23, 0.2, 0.07)
    for step in (0, 1, 55, 109, 110, 111, 295, 479, 480):
        assert float(schedule(step)) == pytest.approx(1.5 * recipes.lr_factor(step, total, r), rel=1e-5)
    facts = recipes.recipe_facts(TrainingConfig(epochs=10, batch_size=1024, recipe=r), 50_000)
    assert facts["steps_per_epoch"] == 48 and facts["total_steps"] == 480
    assert facts["schedule"] == [[0, pytest.approx(0.3)], [110, 1.5], [480, pytest.approx(0.105)]]
    assert recipes.recipe_facts(TrainingConfig(), 50_000) is None


def test_bn_biases_step_bias_rate_times_farther_like_the_8q_reparametrisation():
    import keras

    from tasks.train.recipe_keras import RateScaledSGD

    model = build_airbench((16, 16, 3), 10, TINY)
    opt = recipes.make_optimizer(model, TINY, 16, 10)
    opt.build(model.trainable_variables)
    rates = dict(zip((v.path for v in model.trainable_variables), opt._rates))
    assert {p for p, r in rates.items() if r == 64.0} == {v.path for v in model.trainable_variables
                                                          if v.path.endswith("/beta")}
    assert sum(r == 1.0 for r in rates.values()) == len(rates) - 6
    # Nesterov SGD on b with the rate x64 == SGD on q with b = 8 q: same trajectory of b.
    b, q = keras.Variable(np.zeros(3, np.float32), name="beta"), keras.Variable(np.zeros(3, np.float32))
    sgd_b = RateScaledSGD(0.1, momentum=0.85, nesterov=True, scaled=[b.path], rate=64.0)
    sgd_q = keras.optimizers.SGD(0.1, momentum=0.85, nesterov=True)
    for g in ([1.0, -2.0, 0.5], [0.3, 0.1, -1.0], [-0.7, 0.2, 0.4]):
        sgd_b.apply([np.array(g, np.float32)], [b])
        sgd_q.apply([8 * np.array(g, np.float32)], [q])  # d loss / d q = 8 d loss / d b
    assert np.allclose(b.numpy(), 8 * q.numpy(), rtol=1e-5)


def test_lookahead_math_covers_bn_statistics_saves_and_resumes(tmp_path):
    import keras

    assert recipes.lookahead_rho(0, 100) == 0 and recipes.lookahead_rho(100, 100) == pytest.approx(0.95 ** 5)
    assert recipes.lookahead_rho(50, 100) == pytest.approx(0.95 ** 5 / 8)
    model = build_airbench((16, 16, 3), 10, TINY)
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.optimizer.build(model.trainable_variables)
    cb = recipes.lookahead_callback(RecipeConfig(), total_steps=100, state_dir=tmp_path)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    floats = [v for v in model.weights if "float" in str(v.dtype)]
    assert any(v.path.endswith("moving_mean") for v in floats) and any(v.path.endswith("moving_variance") for v in floats)
    start = [v.numpy() for v in floats]
    rng = np.random.default_rng(1)
    moved = [s + rng.normal(size=s.shape).astype(np.float32) for s in start]
    for v, m in zip(floats, moved):
        v.assign(m)
    model.optimizer.iterations.assign(50)
    cb.on_train_batch_end(0)
    ema, expect = recipes.lookahead_update(start, moved, recipes.lookahead_rho(50, 100))
    for v, e in zip(floats, expect):
        assert np.allclose(v.numpy(), e, atol=1e-6), v.path  # BN moving statistics included
    model.optimizer.iterations.assign(51)  # not a multiple of 5: nothing happens
    floats[0].assign(floats[0].numpy() + 1)
    cb.on_train_batch_end(1)
    assert np.allclose(floats[0].numpy(), expect[0] + 1)
    cb.on_epoch_end(0)
    assert (tmp_path / "lookahead-1.npz").is_file()
    resumed = recipes.lookahead_callback(RecipeConfig(), total_steps=100, state_dir=tmp_path)
    resumed.set_model(model)
    resumed.on_epoch_begin(1)  # resumes from the file, not from the (moved) weights
    assert all(np.allclose(a.numpy(), b) for a, b in zip(resumed.ema, ema))
    model.optimizer.iterations.assign(100)  # the last step: w <- rho-averaged, then w <- ema
    resumed.on_train_batch_end(2)
    assert all(np.allclose(v.numpy(), e.numpy()) for v, e in zip(floats, resumed.ema))
    late = recipes.lookahead_callback(RecipeConfig(), total_steps=100, state_dir=tmp_path)
    late.set_model(model)
    with pytest.raises(TrainingError, match=r"lookahead-3\.npz is missing"):
        late.on_epoch_begin(3)


# --------------------------------------------------------------------------- the input stream
def test_alternating_flip_mirrors_the_complement_every_other_epoch():
    import tensorflow as tf

    n = 11
    idx = tf.range(n, dtype=tf.int64)
    masks = [flip_mask(idx, e, 7, n, "alternate").numpy() for e in range(4)]
    assert masks[0].sum() == n // 2
    assert np.array_equal(masks[1], ~masks[0]) and np.array_equal(masks[2], masks[0])
    assert np.array_equal(masks[3], masks[1])
    by_batch = np.concatenate([flip_mask(idx[:4], 2, 7, n, "alternate").numpy(),
                               flip_mask(idx[4:], 2, 7, n, "alternate").numpy()])
    assert np.array_equal(by_batch, masks[2])  # a row's flip does not depend on its batch
    assert not np.array_equal(flip_mask(idx, 0, 8, n, "alternate").numpy(), masks[0])  # the seed decides
    rand = [flip_mask(idx, e, 7, n, "random").numpy() for e in range(3)]
    assert all(m.sum() == n // 2 for m in rand) and not np.array_equal(rand[1], ~rand[0])
    assert not flip_mask(idx, 0, 7, n, "off").numpy().any()


def test_translation_is_a_reflect_padded_integer_shift():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
    out = translate_batch(tf.constant(x), tf.constant([3, 4], tf.int64), 2).numpy()
    assert out.dtype == np.uint8 and out.shape == x.shape
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if np.array_equal(out[i], padded[i, dy:dy + 6, dx:dx + 6])]
        assert hits, f"image {i} is not an integer shift of its reflect-padded self"
        offsets.append(hits[0])
    assert len(set(offsets)) > 3  # shifts differ per image


def test_recipe_stream_flips_per_epoch_and_resumes_at_any_epoch():
    x = np.zeros((8, 4, 4, 1), np.uint8)
    x[:, :, 0, 0] = np.arange(8)[:, None] + 1  # image i: column 0 holds i+1, the rest 0
    y = np.arange(8, dtype=np.uint8) % 2

    def epochs(start):
        ds = recipe_dataset(x, y, 2, 4, seed=3, epochs=3, start_epoch=start, translate=0)
        return [(xb.numpy(), yb.numpy()) for xb, yb in ds]

    batches = epochs(0)
    assert len(batches) == 6  # 2 full batches per epoch, 3 epochs
    flipped = []
    for e in range(3):
        xb = np.concatenate([b[0] for b in batches[2 * e:2 * e + 2]])[..., 0]
        ids = np.where(xb[:, :, 0].max(1) > 0, xb[:, :, 0].max(1), xb[:, :, 3].max(1)) * 255 - 1
        assert sorted(np.rint(ids).astype(int)) == list(range(8))  # every image once per epoch
        flipped.append({int(round(i)) for i, row in zip(ids, xb) if row[:, 3].max() > 0})
    assert len(flipped[0]) == 4 and flipped[1] == set(range(8)) - flipped[0] and flipped[2] == flipped[0]
    resumed = epochs(2)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(resumed, batches[4:]))


# --------------------------------------------------------------------------- settings and runtime
def test_bf16_is_picked_for_the_recipe_on_cpus_that_have_it():
    assert cpu_has_bf16("flags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags : fpu amx_bf16 amx_tile\n") and not cpu_has_bf16("flags : fpu avx2 fma\n")
    fast = TrainingConfig(recipe=RecipeConfig())
    assert resolve_runtime(fast, 0, bf16_cpu=True).precision == "mixed_bfloat16"
    assert resolve_runtime(fast, 0, bf16_cpu=False).precision == "float32"
    assert resolve_runtime(TrainingConfig(), 0, bf16_cpu=True).precision == "float32"  # the notebook's
    gpu = resolve_runtime(fast, 1, bf16_cpu=True)
    assert (gpu.precision, gpu.xla) == ("mixed_float16", True)
    assert resolve_runtime(TrainingConfig(recipe=RecipeConfig(), mixed_precision="off"), 0, True).precision == "float32"


def test_recipe_settings_are_checked():
    bad = RecipeConfig(momentum=1.0, lookahead_decay=1.0, translate=-1, widths=(8, 0, 8))
    assert {k for k, _ in bad.problems()} == {"momentum", "lookahead_decay", "translate", "widths"}
    keys = {k for k, _ in TrainingConfig(recipe=RecipeConfig(), augment=True).problems()}
    assert keys == {"augment"}


# --------------------------------------------------------------------------- resume after kill -9
WORKER = textwrap.dedent("""
    import json, sys, time
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()
    import keras
    from pathlib import Path
    from tasks.core.datacache import record_from_manifest
    from tasks.core.files import read_json
    from tasks.prepare.config import PrepareConfig
    from tasks.train.config import RecipeConfig, TrainingConfig
    from tasks.train.run import run_training
    dataset_dir, data_dir, pause = sys.argv[1], sys.argv[2], int(sys.argv[3])
    class Pause(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch + 1 == pause:
                print(f"PAUSED {pause}", flush=True)
                time.sleep(600)
    ds = record_from_manifest(dataset_dir, read_json(Path(dataset_dir) / "manifest.json"))
    cfg = TrainingConfig(epochs=4, batch_size=16, seed=5,
                         recipe=RecipeConfig(widths=(8, 16, 16), whiten_images=40, whiten_bias_epochs=1))
    rec = run_training(ds, None, "airbench", cfg, PrepareConfig(), data_dir,
                       extra_callbacks=(Pause(),) if pause else ())
    print("RESULT " + json.dumps({"path": rec.path}), flush=True)
""")


def _worker(dataset, data_dir, pause=0):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", WORKER, dataset.path, str(data_dir), str(pause)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(proc) -> dict:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return json.loads(re.search(r"^RESULT (.*)$", out, re.MULTILINE).group(1))


@pytest.mark.subprocess  # starts processes of its own: not in make test-fast
def test_killed_recipe_run_resumes_to_the_same_weights_lookahead_included(tmp_path):
    import keras

    from trainfolders import make_cache

    dataset = make_cache(tmp_path, n_train=64, n_test=16)
    straight = _worker(dataset, tmp_path / "straight")
    killed = _worker(dataset, tmp_path / "resumed", pause=3)
    lines = []
    deadline = time.monotonic() + 240
    for line in killed.stdout:  # epochs 1-2 done, their backup and lookahead state written
        lines.append(line)
        if line.startswith("PAUSED 3") or time.monotonic() > deadline:
            break
    assert lines and lines[-1].startswith("PAUSED 3"), "".join(lines)[-3000:]
    work = next((tmp_path / "resumed" / "models").glob("*.work"))
    assert (work / "backup" / "lookahead-2.npz").is_file()
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    resumed = _result(_worker(dataset, tmp_path / "resumed"))
    meta = json.loads((Path(resumed["path"]) / "train.json").read_text())
    assert meta["resumed_from_epoch"] == 2
    a = keras.models.load_model(Path(_result(straight)["path"]) / "model.keras", compile=False)
    b = keras.models.load_model(Path(resumed["path"]) / "model.keras", compile=False)
    for va, vb in zip(a.weights, b.weights):
        assert np.allclose(va.numpy(), vb.numpy(), atol=1e-5), va.path
