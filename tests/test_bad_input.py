"""Bad input to the Python API gets a clear exception: never an abort of the
interpreter, a hang, or a silent wrong result."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from flax import nnx

from lumijax import convert, hardware, interop, layers, lmn, native, quant, runtime
from lumijax.convert import serialize

RNG = np.random.default_rng(17)
EXPORT = Path(__file__).resolve().parent.parent / "export"


def test_a_panic_in_native_code_is_an_ordinary_exception():
    panic = native.load().NativePanic
    assert issubclass(panic, RuntimeError)
    with pytest.raises(RuntimeError, match="internal error in lumijax's native code .*: the message"):
        native.load().panic_inside_the_guard("the message")


def test_the_native_kernels_refuse_other_layouts_than_c_order():
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = np.asfortranarray(RNG.standard_normal((4, 5)).astype(np.float32))
    with pytest.raises(ValueError, match="b must be C-contiguous"):
        native.load().matmul(a, b)
    np.testing.assert_allclose(interop.matmul_numpy(a, b), a @ b, rtol=1e-5, atol=1e-6)
    x = np.asfortranarray(RNG.standard_normal((4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        native.load().causal_softmax(x, 1.0)
    np.testing.assert_allclose(interop.causal_softmax_numpy(x, 1.0), interop.causal_softmax_numpy(np.ascontiguousarray(x), 1.0))


def test_a_nan_softmax_scale_is_refused_everywhere():
    x = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="scale must be finite"):
        interop.causal_softmax_numpy(x, float("nan"))
    with pytest.raises(ValueError, match="scale must be finite"):
        native.load().causal_softmax_backward(x, x, float("inf"))


def test_an_empty_product_over_a_huge_batch_allocates_nothing():
    # 2^40 output matrices of 0×0: nothing to compute, nothing to index.
    a = np.zeros((2**20, 1, 0, 4), np.float32)
    b = np.zeros((1, 2**20, 4, 0), np.float32)
    assert interop.matmul_numpy(a, b).shape == (2**20, 2**20, 0, 0)


def test_hardware_bounds_keep_the_snr_a_number():
    with pytest.raises(ValueError, match=r"laser_power_mW = 1e\+308 is out of range"):
        hardware.HardwareConfig(laser_power_mW=1e308)
    extremes = [
        dict(laser_power_mW=1e6, responsivity_A_per_W=1e3, bandwidth_GHz=1e6, rin_db_per_hz=-300.0),
        dict(laser_power_mW=1e-30, temperature_K=1e4, load_resistance_ohm=1e-30, bandwidth_GHz=1e6),
        dict(quality_factor=1e12, wavelength_nm=100.0, channel_spacing_nm=1e-6, crosstalk_suppression_db=300.0),
    ]
    for fields in extremes:
        snr = float(hardware.snr(hardware.HardwareConfig(**fields)))
        assert np.isfinite(snr) or snr == np.inf, (fields, snr)
        assert not np.isnan(snr)


def test_layers_refuse_impossible_sizes_and_bit_widths():
    with pytest.raises(ValueError, match="in_features = 0 must be an integer ≥ 1"):
        layers.OpticalLinear(0, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="out_features = 0"):
        layers.OpticalConv(3, 0, 3, rngs=nnx.Rngs(0))
    for bits in (0, 17, 2.5):
        with pytest.raises(ValueError, match="weight_bits = .* is out of range: allowed 1..16"):
            layers.OpticalLinear(4, 4, weight_bits=bits, rngs=nnx.Rngs(0))
    layer = layers.OpticalLinear(4, 3, rngs=nnx.Rngs(0))
    for order in ([0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 4]):
        with pytest.raises(ValueError, match="permutation of the 4 inputs"):
            layer.set_slot_order(order)


@pytest.mark.parametrize("mode", ["expected", "noisy"])
def test_one_infinite_input_saturates_its_converter_and_spoils_no_other_example(mode):
    layer = layers.OpticalLinear(8, 5, core=layers.PhotonicCore(mode=mode, rngs=nnx.Rngs(0, noise=1)), rngs=nnx.Rngs(0))
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    bad = x.copy()
    bad[0, 2] = np.inf
    bad[1, 5] = np.nan
    y = np.asarray(layer(jnp.asarray(bad)))
    assert np.isfinite(y[0]).all(), "an infinite input saturates the DAC"
    assert np.isnan(y[1]).any() and np.isfinite(y[2:]).all()
    # The range the converters track ignores the non-finite entries.
    state = quant.DynamicRangeEstimator().update(quant.DynamicRangeEstimator().init(), jnp.asarray(bad))
    clean = quant.DynamicRangeEstimator().update(quant.DynamicRangeEstimator().init(), jnp.asarray(np.where(np.isfinite(bad), bad, 0)))
    assert np.isfinite(state.range) and float(state.range) == pytest.approx(float(clean.range), rel=0.05)


def saved_gpt(tmp_path):
    model = convert.recipe("gpt2", vocab_size=10, n_positions=8, n_embd=8, n_layer=2, n_head=2)
    path = serialize.save(model, tmp_path / "m.lumijax")
    return model, path, msgpack.unpackb(path.read_bytes())


def rewrite(path, payload):
    path.write_bytes(msgpack.packb(payload, use_bin_type=True))
    return path


def test_a_model_file_claiming_more_than_it_holds_is_refused_before_it_is_built(tmp_path):
    _, path, payload = saved_gpt(tmp_path)
    payload["config"]["n_layer"] = 10**6
    start = time.perf_counter()
    with pytest.raises(serialize.ModelFileError, match="more photonic layers than the 11 whose state the file holds"):
        serialize.load(rewrite(tmp_path / "deep.lumijax", payload))
    assert time.perf_counter() - start < 30
    payload["config"].update(n_layer=2, n_embd=10**6, n_head=1)  # 4 TB of weights, claimed
    with pytest.raises(serialize.ModelFileError, match=r"float32 \(10, 8\) in the file, the model holds float32 \(10, 1000000\)"):
        serialize.load(rewrite(tmp_path / "wide.lumijax", payload))


def test_a_model_file_slot_order_must_be_a_permutation(tmp_path):
    model, path, payload = saved_gpt(tmp_path)
    payload["slot_orders"] = {"lm_head": [0] * 8}
    with pytest.raises(serialize.ModelFileError, match="slot order of 'lm_head': a slot order must be a permutation of the 8 inputs"):
        serialize.load(rewrite(tmp_path / "order.lumijax", payload))
    payload["slot_orders"] = {"lm_head": [7, 6, 5, 4, 3, 2, 1, 0]}
    loaded = serialize.load(rewrite(tmp_path / "reversed.lumijax", payload))
    x = np.zeros((1, 4), np.int32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6)


def test_runtime_caps_are_the_callers_to_set():
    blob = (EXPORT / "tests/fixtures/resnet.lmn").read_bytes()
    io = np.load(EXPORT / "tests/fixtures/resnet.io.npz")
    cost = runtime.from_bytes(blob).cost
    assert 0 < cost["ideal"]["memory_bytes"] < cost["hardware"]["memory_bytes"]
    assert 0 < cost["ideal"]["work"] < cost["hardware"]["work"]
    with pytest.raises(lmn.LmnError, match=r"over the limits: a run in ideal mode needs \d+ bytes of memory at .*past the cap of 1000 bytes"):
        runtime.from_bytes(blob, max_memory_bytes=1000)
    with pytest.raises(lmn.LmnError, match=r"takes \d+ multiply-adds \(most at node \d+ \(\"[\w.]+\", conv2d\)\), past the cap of 10 \(max_work\)"):
        runtime.from_bytes(blob, max_work=10)
    # Enough for ideal mode, not for the hardware modes: refused when such a run starts.
    tight = runtime.from_bytes(blob, max_memory_bytes=cost["ideal"]["memory_bytes"])
    (y,) = tight.run([io["x"]])
    np.testing.assert_allclose(y, io["ideal"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="over the limits: a run in expected mode needs"):
        tight.run([io["x"]], mode="expected")


def test_a_run_stays_within_the_memory_the_reader_predicts():
    """The cost the reader computes bounds what `lmn check` (a run on zeros in
    every mode) really holds, beyond the process's own start-up footprint."""
    binary = runtime.lmn_binary()
    assert binary is not None, "build the lmn binary (make builds it)"
    root = EXPORT
    measure = "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    baseline_kb = int(subprocess.run([sys.executable, "-c", measure, str(binary), "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    for path in [root / "tests/fixtures/resnet.lmn", root / "fuzz/regressions/conv-100x100-kernel-over-one-pixel.lmn"]:
        predicted = runtime.load(path).cost["hardware"]["memory_bytes"]
        done = subprocess.run([sys.executable, "-c", measure, str(binary), "check", str(path)], capture_output=True, text=True, check=True)
        peak = int(done.stdout.splitlines()[-1]) * 1024
        assert peak <= predicted + 2 * baseline_kb * 1024 + path.stat().st_size, (path.name, peak, predicted)


@pytest.mark.parametrize("name", sorted(p.name for p in (EXPORT / "fuzz/regressions").glob("*.lmn")))
def test_hostile_files_end_in_an_ordinary_error_through_the_runtime(name):
    """Each file that once broke the runtime is refused (LmnError), or runs
    in every mode or stops with a ValueError; never a panic or an abort."""
    path = EXPORT / "fuzz/regressions" / name
    try:
        model = runtime.load(path)
    except lmn.LmnError as err:
        assert "compensation" in str(err), err
        return
    zeros = [np.zeros(shape, np.int32 if dtype == "i32" else np.float32) for _, dtype, shape in model.inputs]
    for mode in runtime.MODES:
        try:
            outputs = model.run(zeros, mode=mode)
        except ValueError as err:
            assert "over the limits" in str(err), err
            continue
        assert [o.shape for o in outputs] == [tuple(s) for _, _, s in model.outputs]
