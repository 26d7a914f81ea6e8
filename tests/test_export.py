"""Export to .lmn and the Rust runtime: conformance, determinism, hostile files."""

from __future__ import annotations

import copy
import struct
import subprocess
import zlib
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
from flax import nnx
from common import relative_error

from lumijax import cli, convert, layers, lmn, peg, runtime, wdm
from lumijax.exporter import LuminaExporter

FIXTURES = Path(__file__).resolve().parent.parent / "export" / "tests" / "fixtures"



@pytest.fixture(scope="module")
def small_gpt():
    model = convert.recipe("gpt2", vocab_size=40, n_positions=16, n_embd=24, n_layer=2, n_head=3, seed=5)
    return model, np.random.default_rng(5).integers(0, 40, (2, 10)).astype(np.int32)


@pytest.fixture(scope="module")
def small_resnet():
    model = convert.recipe("resnet", layers=(1, 1, 1, 1), width=8, num_classes=7, seed=6, weight_bits=6)
    return model, np.random.default_rng(6).normal(size=(2, 3, 24, 24)).astype(np.float32)


def test_fixtures_are_current(tmp_path):
    """The committed conformance fixtures are what the writer makes today."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", FIXTURES / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.main(tmp_path)
    for name in ("gpt.lmn", "resnet.lmn"):
        assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), f"regenerate {name}"


@pytest.mark.parametrize("which", ["small_gpt", "small_resnet"])
def test_runtime_matches_the_model(which, request, tmp_path):
    model, x = request.getfixturevalue(which)
    path = LuminaExporter(model.factory.hardware).export(model, tmp_path / "m.lmn", [x])
    (y,) = runtime.load(path).run([x])
    assert relative_error(y, model(x)) <= 1e-4
    assert path.read_bytes() == lmn.encode(peg.build(model, [x]), producer=lmn.read(path)[0]["producer"])  # deterministic


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = convert.recipe("resnet", layers=(1, 1, 1, 1), width=8, num_classes=7, seed=6, weight_bits=6, mode="noisy")
    x = np.random.default_rng(7).normal(size=(2, 3, 16, 16)).astype(np.float32)
    hardware = model.factory.hardware.replace(crosstalk_suppression_db=20.0)
    def values(model):  # every array of the state, random keys as their data
        return [np.array(jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v)
                for v in jax.tree.leaves(nnx.state(model))]

    before = values(model)
    planned = LuminaExporter(hardware, wdm.WDMPlanner(hardware)).export(model, tmp_path / "planned.lmn", [x])
    after = values(model)
    assert len(before) == len(after) and all(np.array_equal(a, b) for a, b in zip(before, after))
    # The file has the plan the model has not: put it on, and the file of the
    # planned model is the same file.
    plan = wdm.WDMMap.from_dict(lmn.read(planned)[0]["wdm"])
    assert any(list(op.permutation) != sorted(op.permutation) for op in plan.ops), "a plan that moves no input"
    plan.apply(model)
    again = LuminaExporter(hardware).export(model, tmp_path / "again.lmn", [x], plan)
    assert again.read_bytes() == planned.read_bytes()


def test_hardware_modes_match_the_model(small_resnet, small_gpt, tmp_path):
    model, x = small_resnet
    layers.set_mode(model, "expected")
    try:
        hardware = model.factory.hardware.replace(crosstalk_suppression_db=20.0)
        plan = wdm.WDMPlanner(hardware).optimize_allocation(model)
        plan.apply(model)
        path = LuminaExporter(hardware).export(model, tmp_path / "r.lmn", [x], plan)
        header, _ = lmn.read(path)
        assert header["wdm"] and header["graph"]["nodes"][1]["attrs"]["core"]["slot_order"] is not None
        loaded = runtime.load(path)
        (expected,) = loaded.run([x], mode="expected")
        reference = np.asarray(model(x))
        assert relative_error(expected, reference) <= 1e-4
        first, again, other = (loaded.run([x], mode="noisy", seed=s)[0] for s in (1, 1, 2))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
        layers.set_mode(model, "noisy")
        ours = np.std([loaded.run([x], mode="noisy", seed=s)[0] - expected for s in range(12)])
        theirs = np.std([np.asarray(model(x)) - reference for _ in range(12)])
        assert 0.75 < ours / theirs < 1.33  # the same noise model, different generators
    finally:
        layers.set_mode(model, "ideal")

    gpt, ids = small_gpt
    layers.set_mode(gpt, "expected")
    try:
        path = LuminaExporter(gpt.factory.hardware).export(gpt, tmp_path / "g.lmn", [ids])
        (logits,) = runtime.load(path).run([ids], mode="expected")
        reference = np.asarray(gpt(ids))
        step = np.abs(reference).max() / 127  # one step of the 8-bit output converter
        assert np.abs(logits - reference).max() <= 4 * step  # rounding ties may fall the other way
    finally:
        layers.set_mode(gpt, "ideal")


def test_lmn_command(tmp_path, small_resnet):
    binary = runtime.lmn_binary()
    assert binary is not None, "build the lmn binary (make builds it)"
    model, x = small_resnet
    path = LuminaExporter(model.factory.hardware).export(model, tmp_path / "r.lmn", [x])
    np.save(tmp_path / "x.npy", x)
    done = subprocess.run([binary, "run", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert relative_error(np.load(tmp_path / "y.npy"), model(x)) <= 1e-4
    np.savez(tmp_path / "io.npz", x=x)
    done = subprocess.run([binary, "run", path, "--input", tmp_path / "io.npz", "--output", tmp_path / "out.npz", "--mode", "noisy", "--seed", "3"])
    assert done.returncode == 0 and np.load(tmp_path / "out.npz")["fc"].shape == (2, 7)
    inspect = subprocess.run([binary, "inspect", path], capture_output=True, text=True)
    assert inspect.returncode == 0 and "conv2d" in inspect.stdout and "x f32 [2, 3, 24, 24]" in inspect.stdout
    np.save(tmp_path / "bad.npy", x[:1])
    bad = subprocess.run([binary, "run", path, "--input", tmp_path / "bad.npy", "--output", tmp_path / "y.npy"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "shape [1, 3, 24, 24]" in bad.stderr
    junk = tmp_path / "junk.lmn"
    junk.write_bytes(b"GGUF" + bytes(60))
    bad = subprocess.run([binary, "inspect", junk], capture_output=True, text=True)
    assert bad.returncode == 2 and "not an .lmn file" in bad.stderr


def test_cli_export(tmp_path, small_resnet, capsys):
    model, x = small_resnet
    convert.save(model, tmp_path / "m.msgpack")
    out = tmp_path / "m.lmn"
    assert cli.main(["export", str(tmp_path / "m.msgpack"), "--out", str(out), "--shape", "1,3,16,16", "--mode", "expected", "--plan"]) == 0
    assert "integer codes" in capsys.readouterr().out
    header, tensors = lmn.read(out)
    assert header["wdm"] is not None and tensors["conv1.weight"].dtype == np.int8
    assert cli.main(["export", str(tmp_path / "missing.msgpack"), "--out", str(out), "--shape", "1,3,16,16"]) == 2


# -- hostile files: each is refused by both readers, with its own message --------


def split(blob: bytes) -> tuple[dict, bytes]:
    _, _, _, header_len = lmn.PREAMBLE.unpack_from(blob)
    data_offset = -(-(16 + header_len) // 64) * 64
    return msgpack.unpackb(blob[16:16 + header_len], raw=False), blob[data_offset:]


def assemble(header: dict, data: bytes, *, checksum: bool = True, major: int = lmn.MAJOR) -> bytes:
    if checksum:
        header = {**header, "checksum": {"algorithm": "crc32", "value": zlib.crc32(data)}}
    raw = msgpack.packb(header, use_bin_type=True)
    pad = -(16 + len(raw)) % 64
    return struct.pack("<4sHHQ", b"LMN\0", major, 0, len(raw)) + raw + bytes(pad) + data


def edited(blob: bytes, edit) -> bytes:
    header, data = split(blob)
    header = copy.deepcopy(header)
    edit(header)
    return assemble(header, data)


def node(header: dict, op: str) -> dict:
    return next(n for n in header["graph"]["nodes"] if n["op"] == op)


def tensor(header: dict, name: str) -> dict:
    return next(t for t in header["tensors"] if t["name"] == name)


def set_nan_scale(blob: bytes) -> bytes:
    header, data = split(blob)
    entry = tensor(header, "conv1.weight.scale")
    data = bytearray(data)
    data[entry["offset"]:entry["offset"] + 4] = struct.pack("<f", float("nan"))
    return assemble(header, bytes(data))


def hostile(resnet_blob: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name → (file, what the Python reader says, what the Rust reader says)."""
    header, data = split(resnet_blob)
    header_len = lmn.PREAMBLE.unpack_from(resnet_blob)[3]
    overflow = lambda h: tensor(h, "conv1.weight").update(shape=[2**62, 2**62, 16])
    cases = {
        "truncated preamble": (resnet_blob[:10], "truncated", "truncated"),
        "truncated header": (resnet_blob[:16 + header_len // 2], "truncated", "truncated"),
        "truncated data": (resnet_blob[: len(resnet_blob) - len(data) // 2], "outside the data section", "outside the data section"),
        "wrong magic": (b"GGUF" + resnet_blob[4:], "magic", "magic"),
        "wrong major version": (assemble(header, data, major=1), "version 1.0", "version 1.0"),
        "zero header length": (resnet_blob[:8] + struct.pack("<Q", 0) + resnet_blob[16:], "header_len 0", "header_len 0"),
        "header length past the cap": (resnet_blob[:8] + struct.pack("<Q", 1 << 40) + resnet_blob[16:], "out of range", "out of range"),
        "header length past the end": (resnet_blob[:8] + struct.pack("<Q", len(resnet_blob)) + resnet_blob[16:], "truncated", "truncated"),
        "header not msgpack": (resnet_blob[:16] + b"\xc1" * header_len + resnet_blob[16 + header_len:], "header", "header"),
        "huge array claim": (struct.pack("<4sHHQ", b"LMN\0", lmn.MAJOR, 0, 5) + b"\xdd\xff\xff\xff\xff", "header", "header"),
        "shape product overflows": (edited(resnet_blob, overflow), "overflows", "overflows"),
        "offset out of bounds": (edited(resnet_blob, lambda h: tensor(h, "fc.bias").update(offset=len(data) + 64)), "outside the data section", "outside the data section"),
        "misaligned offset": (edited(resnet_blob, lambda h: tensor(h, "fc.bias").update(offset=tensor(h, "fc.bias")["offset"] + 4)), "multiple of 64", "multiple of 64"),
        "overlapping tensors": (edited(resnet_blob, lambda h: tensor(h, "fc.bias").update(offset=tensor(h, "fc.weight")["offset"])), "overlap", "overlap"),
        "unknown dtype": (edited(resnet_blob, lambda h: tensor(h, "fc.bias").update(dtype="f16")), "dtype 'f16'", "dtype \"f16\""),
        "checksum mismatch": (assemble(header, data[:-1] + bytes([data[-1] ^ 1]), checksum=False), "checksum", "checksum"),
        "NaN scale": (set_nan_scale(resnet_blob), "NaN", "NaN"),
        "cycle": (edited(resnet_blob, lambda h: h["graph"]["nodes"].reverse()), "not defined before use", "not defined before use"),
        "undefined input": (edited(resnet_blob, lambda h: node(h, "relu")["inputs"].__setitem__(0, "ghost")), "not defined before use", "not a declared value"),
        "wrong arity": (edited(resnet_blob, lambda h: node(h, "add")["inputs"].pop()), "inputs and gives 1 output", "inputs and gives 1 output"),
        "unknown op": (edited(resnet_blob, lambda h: node(h, "relu").update(op="softplus")), "unknown op", "unknown op"),
        "missing param": (edited(resnet_blob, lambda h: node(h, "scale_shift")["params"].pop("shift")), "needs param 'shift'", "needs param \"shift\""),
        "missing tensor": (edited(resnet_blob, lambda h: node(h, "linear")["params"].update(bias="nowhere")), "does not hold", "does not hold"),
        "codes without quantization": (edited(resnet_blob, lambda h: tensor(h, "conv1.weight").pop("quant")), "codes without quant", "no quant"),
        "code out of range": (edited(resnet_blob, lambda h: tensor(h, "conv1.weight")["quant"].update(bits=1)), "codes outside", "codes outside"),
    }
    return cases


def test_hostile_files_are_refused_by_both_readers(small_resnet, tmp_path):
    model, x = small_resnet
    layers.set_mode(model, "expected")
    try:
        blob = lmn.encode(peg.build(model, [x]))
    finally:
        layers.set_mode(model, "ideal")
    lmn.decode(blob)
    runtime.from_bytes(blob)
    for name, (bad, python_says, rust_says) in hostile(blob).items():
        with pytest.raises(lmn.LmnError, match=None) as python_error:
            lmn.decode(bad)
        assert python_says in str(python_error.value), f"{name}: Python said {python_error.value}"
        with pytest.raises(lmn.LmnError) as rust_error:
            runtime.from_bytes(bad)
        assert rust_says in str(rust_error.value), f"{name}: Rust said {rust_error.value}"


def test_the_rust_reader_checks_the_core_attributes(small_resnet):
    model, x = small_resnet
    blob = lmn.encode(peg.build(model, [x]))
    core = lambda h: node(h, "linear")["attrs"]["core"]
    for edit, message in [(lambda h: core(h).update(input_bits=1), "input_bits must be 2..=16"),
                          (lambda h: core(h).update(input_signed="yes"), "input_signed must be a bool or nil"),
                          (lambda h: core(h).update(output_range=-1.0), "output_range must be > 0"),
                          (lambda h: core(h).update(snr=0.0), "snr must be > 0")]:
        with pytest.raises(lmn.LmnError, match=message):
            runtime.from_bytes(edited(blob, edit))


def test_shape_inference_catches_wrong_declarations(small_resnet):
    model, x = small_resnet
    blob = lmn.encode(peg.build(model, [x]))
    bad = edited(blob, lambda h: h["graph"]["values"][2].update(shape=[2, 99, 12, 8]))
    with pytest.raises(lmn.LmnError, match="declares .* but computes"):
        runtime.from_bytes(bad)


def test_export_refuses_what_it_cannot_express():
    with pytest.raises(peg.ExportError, match="covers the GPT and ResNet recipes"):
        peg.build(layers.OpticalLinear(4, 4, rngs=nnx.Rngs(0)), [np.zeros((1, 4), np.float32)])
    model = convert.recipe("gpt2", vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2, activation_function="silu")
    with pytest.raises(peg.ExportError, match="activation 'silu'"):
        peg.build(model, [np.zeros((1, 4), np.int32)])
    with pytest.raises(peg.ExportError, match="exceeds|T ≤ 8"):
        peg.build(convert.recipe("gpt2", vocab_size=10, n_positions=8, n_embd=8, n_layer=1, n_head=2), [np.zeros((1, 9), np.int32)])
