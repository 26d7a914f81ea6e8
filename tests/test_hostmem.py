"""A training step keeps its temporaries in the process between steps."""

import resource

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from lumijax import hostmem, tune

glibc = pytest.mark.skipif(not hostmem.is_glibc(), reason="glibc's allocator")

BATCH, WIDTH = 4096, 1024  # each activation 16 MiB; the step's temporaries well over 32 MiB


class Tower(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(4)])

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return x


def _loss(model, x, y):
    loss = jnp.mean((model(x) - y) ** 2)
    return loss, (loss, loss)


def _faults_of_a_step(retain: bool, monkeypatch) -> tuple[int, int]:
    """Minor page faults of a step after warm-up (the steps before it reach
    the process's peak footprint), and the pages of the step's temporaries."""
    if not retain:
        monkeypatch.setattr(hostmem, "compiler_options", lambda: None)
    model = Tower(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(1e-3), wrt=tune.WEIGHTS_AND_SCALES)
    step = tune.TrainingStep(_loss, model, opt, retain_host_memory=retain)
    x = jnp.ones((BATCH, WIDTH)) / WIDTH
    y, key = jnp.zeros((BATCH, WIDTH)), jax.random.key(0)
    temp = step._step.lower(step.state, step._teacher_state, x, y, key).compile().memory_analysis().temp_size_in_bytes
    for _ in range(4):
        jax.block_until_ready(step(x, y, key))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(x, y, key))
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, temp // 4096


@glibc
def test_a_step_reuses_its_temporaries(monkeypatch):
    faults, pages = _faults_of_a_step(True, monkeypatch)
    assert pages > (64 << 20) // 4096, "the test needs temporaries over glibc's mmap threshold"
    assert faults < pages // 10, f"{faults} page faults a step for {pages} pages of temporaries"


@glibc
def test_the_settings_are_what_keeps_them():
    # The same step with neither setting maps its temporaries afresh each
    # step (in a fresh process: glibc's settings last for the process).
    import subprocess
    import sys

    code = (
        "import pytest, sys; sys.path.insert(0, 'tests'); import test_hostmem as t\n"
        "mp = pytest.MonkeyPatch(); f, p = t._faults_of_a_step(False, mp); print(f, p)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    faults, pages = int(out[-2]), int(out[-1])
    assert faults > pages // 2, f"{faults} faults for {pages} pages: the control does not map afresh"


@glibc
def test_retain_freed_memory_applies_on_glibc():
    assert hostmem.retain_freed_memory() is True
    assert hostmem.compiler_options() == hostmem.COMPILER_OPTIONS
