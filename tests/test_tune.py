"""Hardware-aware fine-tuning and co-design (lumijax.tune)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads
from sklearn.datasets import load_digits

from lumijax import layers, tune
from lumijax.convert.factory import LayerFactory
from lumijax import hardware as hw


def digits(count: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Flattened 8×8 digits in [0, 1] and their labels."""
    data = load_digits()
    return (data.data[:count] / 16.0).astype(np.float32), data.target[:count]


class Perceptron(nnx.Module):
    """Two photonic layers, 4-bit weights, each on a core of its own."""

    def __init__(self, factory: LayerFactory, rngs: nnx.Rngs):
        self.hidden = factory.linear(64, 32, rngs=rngs)
        self.out = factory.linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


def small_model(seed: int = 0, **hardware) -> nnx.Module:
    factory = LayerFactory(hw.HardwareConfig(**hardware), "ideal", weight_bits=4)
    return Perceptron(factory, nnx.Rngs(seed, noise=seed + 1))


def test_finetune_lowers_the_loss_under_noise():
    data = digits()
    model = small_model(channel_spacing_nm=0.4)
    tune.apply_hardware(model, hw.HardwareConfig(channel_spacing_nm=0.4), "noisy")
    before, _ = tune.evaluate(model, data)
    history = tune.finetune(model, data, optimizer=optax.adam(3e-3), steps=60, progress=False)
    after, accuracy = tune.evaluate(model, data)
    assert len(history.loss) == 60 and all(np.isfinite(history.loss))
    assert after < 0.5 * before, (before, after)
    assert accuracy > 0.5
    assert all(core.mode == "noisy" for core in layers.photonic_cores(model))


def test_finetune_stops_on_a_non_finite_loss():
    x, y = digits(64)
    model = small_model()
    # step 0's loss comes before the first (NaN) update; step 1's is NaN
    with pytest.raises(FloatingPointError, match="the loss became nan at step 1"):
        tune.finetune(model, (x, y), optimizer=optax.sgd(float("nan")), steps=3, batch_size=32, mode="ideal",
                      progress=False)


def test_finetune_draws_fresh_noise_every_step():
    # Same batch twice on a frozen model: a noisy loss differs, an expected one does not.
    x, y = digits(64)
    model = small_model()
    tune.apply_hardware(model, hw.HardwareConfig(), "noisy")
    losses = [tune.evaluate(model, (x, y))[0] for _ in range(2)]
    assert losses[0] != losses[1]
    layers.set_mode(model, "expected")
    assert tune.evaluate(model, (x, y))[0] == tune.evaluate(model, (x, y))[0]


def test_evaluate_averages_over_noise_draws():
    x, y = digits(64)
    model = small_model()
    tune.apply_hardware(model, hw.HardwareConfig(), "noisy")
    twin = nnx.clone(model)  # the same noise streams
    averaged = tune.evaluate(model, (x, y), draws=3)
    singles = [tune.evaluate(twin, (x, y)) for _ in range(3)]
    np.testing.assert_allclose(averaged, np.mean(singles, axis=0), rtol=1e-6)
    assert len({loss for loss, _ in singles}) == 3  # three different draws
    with pytest.raises(ValueError, match="draws = 0"):
        tune.evaluate(model, (x, y), draws=0)


def test_distillation_loss_is_the_tempered_kl_times_t_squared():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 5, 7)), 3 * rng.normal(size=(2, 5, 7))
    temperature = 2.5

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    p = np.exp(log_softmax(teacher / temperature))
    want = temperature ** 2 * np.mean(np.sum(p * (log_softmax(teacher / temperature) - log_softmax(student / temperature)), -1))
    assert float(tune.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), temperature)) == pytest.approx(want, rel=1e-5)
    assert float(tune.distillation_loss(jnp.asarray(teacher), jnp.asarray(teacher), temperature)) == pytest.approx(0.0, abs=1e-6)
    check_grads(lambda s: tune.distillation_loss(s, jnp.asarray(teacher, jnp.float32), temperature),
                (jnp.asarray(student, jnp.float32),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def trained_teacher(x: np.ndarray, y: np.ndarray) -> nnx.Module:
    teacher = small_model(seed=1)  # ideal mode
    tune.finetune(teacher, (x, y), optimizer=optax.adam(3e-3), steps=30, mode="ideal", progress=False)
    return teacher


def divergence(model: nnx.Module, teacher: nnx.Module, x: np.ndarray) -> float:
    """The distillation loss of ``model`` (without noise) on ``x``."""
    layers.set_mode(model, "expected")
    value = float(tune.distillation_loss(model(x), teacher(x)))
    layers.set_mode(model, "noisy")
    return value


def test_finetune_distils_a_teacher():
    x, y = digits(256)
    teacher = trained_teacher(x, y)
    student = small_model(seed=0)
    tune.apply_hardware(student, hw.HardwareConfig(), "noisy")
    twin = nnx.clone(student)  # the same weights and noise streams
    start = divergence(student, teacher, x)
    tune.finetune(student, (x, y), optimizer=optax.adam(3e-3), steps=30, progress=False, teacher=teacher,
                  distillation_weight=1.0)
    assert divergence(student, teacher, x) < 0.3 * start
    # With α = 0 the teacher only rides along: the run is the plain one.
    plain = tune.finetune(nnx.clone(twin), (x, y), optimizer=optax.adam(3e-3), steps=5, progress=False)
    riding = tune.finetune(twin, (x, y), optimizer=optax.adam(3e-3), steps=5, progress=False, teacher=teacher,
                           distillation_weight=0.0)
    np.testing.assert_allclose(riding.loss, plain.loss, rtol=1e-6)
    with pytest.raises(ValueError, match="distillation_weight"):
        tune.finetune(twin, (x, y), steps=1, progress=False, teacher=teacher, distillation_weight=1.5)


def test_mixup_blends_each_example_with_another_of_the_batch():
    x = np.random.default_rng(0).normal(size=(16, 1, 3, 4)).astype(np.float32)
    blended, permutation, share = tune.mixup_inputs(jnp.asarray(x), jax.random.key(3))
    permutation, share = np.asarray(permutation), np.asarray(share)
    assert sorted(permutation) == list(range(16))
    assert ((share >= 0) & (share < 1)).all() and share.std() > 0.1
    want = share[:, None, None, None] * x + (1 - share[:, None, None, None]) * x[permutation]
    np.testing.assert_allclose(np.asarray(blended), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="token ids"):
        tune.mixup_inputs(jnp.arange(16), jax.random.key(0))


def test_mixed_cross_entropy_blends_the_two_labels_losses():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 5)).astype(np.float32)
    targets, partners = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
    share = rng.uniform(size=8).astype(np.float32)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    rows = np.arange(8)
    want = np.mean(-share * log_p[rows, targets] - (1 - share) * log_p[rows, partners])
    loss, accuracy = tune.mixed_cross_entropy(jnp.asarray(logits), targets, partners, jnp.asarray(share))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    dominant = np.where(share >= 0.5, targets, partners)
    assert float(accuracy) == pytest.approx(np.mean(logits.argmax(-1) == dominant))
    # With all of the blend from the first input, it is the plain cross-entropy.
    assert float(tune.mixed_cross_entropy(jnp.asarray(logits), targets, partners, jnp.ones(8))[0]) == pytest.approx(
        float(tune.cross_entropy(jnp.asarray(logits), targets)[0]), rel=1e-6)
    check_grads(lambda z: tune.mixed_cross_entropy(z, targets, partners, jnp.asarray(share))[0],
                (jnp.asarray(logits),), order=1, modes=("rev",))


def test_finetune_with_mixup_distils_the_teacher_between_the_examples():
    x, y = digits(256)
    teacher = trained_teacher(x, y)
    student = small_model(seed=0)
    tune.apply_hardware(student, hw.HardwareConfig(), "noisy")
    blends = np.asarray(tune.mixup_inputs(jnp.asarray(x), jax.random.key(99))[0])  # blends not trained on
    start = divergence(student, teacher, blends)
    history = tune.finetune(student, (x, y), optimizer=optax.adam(3e-3), steps=30, progress=False, teacher=teacher,
                            distillation_weight=1.0, mixup=True)
    assert divergence(student, teacher, blends) < 0.3 * start
    assert len(history.loss) == 30 and np.isfinite(history.task_loss).all()
    with pytest.raises(ValueError, match="mixup needs floating inputs"):
        tune.finetune(student, (np.arange(256)[:, None], y), steps=1, progress=False, mixup=True)


def test_warmup_cosine_adam_follows_its_schedule():
    peak, steps, warmup = 2e-3, 40, 4
    optimizer = tune.warmup_cosine_adam(peak, steps, warmup_fraction=0.1, final_fraction=0.05)
    params, grad = jnp.zeros(3), jnp.array([0.5, -2.0, 1e-2])
    state, updates = optimizer.init(params), []
    for _ in range(steps):
        update, state = optimizer.update(grad, state, params)
        updates.append(np.asarray(update))
    # Adam on a constant gradient has m̂ = g and v̂ = g²: each step moves by
    # the learning rate against the gradient's sign (float32, ε = 1e-8).
    t = np.arange(steps)
    cosine = 0.05 * peak + 0.95 * peak * (1 + np.cos(np.pi * (t - warmup) / (steps - warmup))) / 2
    rate = np.where(t < warmup, peak * t / warmup, cosine)
    np.testing.assert_allclose(np.asarray(updates), -np.sign(grad) * rate[:, None], rtol=1e-4, atol=1e-12)
    with pytest.raises(ValueError, match="steps = 0"):
        tune.warmup_cosine_adam(1e-3, 0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        tune.warmup_cosine_adam(1e-3, 10, warmup_fraction=1.0)


def test_codesign_gradient_in_spacing_matches_finite_differences():
    # Expected mode with 16-bit converters: the loss is smooth in the spacing
    # up to steps far below the difference step.
    x, y = digits(32)
    hardware = hw.HardwareConfig(channel_spacing_nm=0.3, dac_bits=16, adc_bits=16)
    model = small_model(**dataclass_fields(hardware))
    tune.apply_hardware(model, hardware, "expected")
    model.eval()
    tuned = tune.SharedSpacing(model, hardware, min_spacing_nm=0.05)

    def loss(module):
        return tune.codesign_loss(module, x, y, band_weight=0.1, reference_band_nm=12.8)[0]

    grads = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, nnx.PathContains("spacing_logit"))))(tuned)
    grad = float(grads["spacing_logit"][...])
    logit, step = float(tuned.spacing_logit[...]), 0.02
    values = []
    for shifted in (logit + step, logit - step):
        tuned.spacing_logit[...] = jnp.float32(shifted)
        values.append(float(nnx.jit(loss)(tuned)))
    finite = (values[0] - values[1]) / (2 * step)
    assert abs(grad) > 1e-3
    assert grad == pytest.approx(finite, rel=0.05), (grad, finite)


def dataclass_fields(config: hw.HardwareConfig) -> dict:
    return {k: v for k, v in config.to_dict().items()}


def test_codesign_keeps_the_spacing_in_range_and_returns_the_hardware():
    data = digits(256)
    model = small_model()
    start = hw.HardwareConfig(channel_spacing_nm=0.6)
    tuned, chosen, history = tune.codesign(model, data, start, steps=15, band_weight=2.0, spacing_learning_rate=0.3,
                                           min_spacing_nm=0.2, batch_size=32, progress=False)
    spacings = np.array(history.channel_spacing_nm)
    assert len(spacings) == 15
    # A heavy band penalty pushes the spacing down, never below its floor.
    assert spacings[-1] < 0.6 and (spacings >= 0.2).all()
    assert chosen.channel_spacing_nm == pytest.approx(spacings[-1], rel=1e-6)
    assert all(float(c.channel_spacing_nm[...]) == pytest.approx(spacings[-1], rel=1e-6) for c in layers.photonic_cores(tuned))


def test_bad_data_and_ranges_fail_clearly():
    model = small_model()
    x, y = digits(16)
    with pytest.raises(ValueError, match="integer class or token ids"):
        tune.finetune(model, (x, y.astype(np.float32)), steps=1, progress=False)
    with pytest.raises(ValueError, match="16 inputs and 15 targets"):
        tune.finetune(model, (x, y[:15]), steps=1, progress=False)
    with pytest.raises(ValueError, match="batch_size = 64"):
        tune.finetune(model, (x, y), steps=1, progress=False)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tune.finetune(model, (bad, y), steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="spacing range must hold the start"):
        tune.SharedSpacing(model, hw.HardwareConfig(channel_spacing_nm=0.8), min_spacing_nm=0.9)


SHARDED = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from jax.sharding import Mesh
    from flax import nnx
    sys.path.insert(0, {tests!r})
    from test_tune import digits, small_model
    from lumijax import tune
    assert jax.device_count() == 4, jax.devices()
    data = digits(64)
    params = []
    # Scales 1% above min-max: no weight sits on the clip edge, where the
    # last bit of exp(log s) (which XLA may compute differently per
    # layout) decides whether its gradient passes.
    # 16-bit converters: values that land on a rounding tie (pixels j/16
    # under a 15-level DAC, codes of one converter feeding the next), which
    # XLA may resolve differently per layout, then move by a 16-bit step.
    for mesh in (None, Mesh(np.array(jax.devices()), ("data",))):
        model = small_model(seed=3, dac_bits=16, adc_bits=16)
        for layer in (model.hidden, model.out):
            layer.set_scale(1.01 * layer.scale())
        tune.finetune(model, data, optimizer=optax.sgd(0.05), steps=2, batch_size=16, mesh=mesh, progress=False)
        params.append(jax.tree.leaves(nnx.state(model, nnx.Param)))
    try:
        tune.finetune(small_model(), data, steps=1, batch_size=6, mesh=mesh, progress=False)
    except ValueError as err:
        assert "does not split over the 4 devices" in str(err), err
    else:
        raise AssertionError("a batch of 6 over 4 devices was accepted")
    print(json.dumps(max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(*params))))
""")


def test_a_sharded_step_equals_the_single_device_step():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = SHARDED.format(tests=os.path.dirname(__file__))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) < 1e-5


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_tune_as_one_process_on_four_devices(tmp_path):
    """``finetune`` on a 4-device mesh: two processes of two host devices
    joined by ``jax.distributed`` end with the parameters one process of
    four devices ends with."""
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    runs = [subprocess.Popen([sys.executable, worker, str(tmp_path / "two.npz"), "--processes", "2", "--process-id",
                              str(i), "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for i in range(2)]
    single = subprocess.run([sys.executable, worker, str(tmp_path / "one.npz"), "--processes", "1"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-3000:]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    tuned = [name for name in one.files if name.startswith("tuned ")]
    assert sorted(one.files) == sorted(two.files) and len(tuned) > 20
    for name in one.files:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
    moved = [name for name in tuned if not np.allclose(one[name], one[name.replace("tuned", "initial", 1)])]
    assert len(moved) > len(tuned) // 2, moved
