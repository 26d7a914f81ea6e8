"""The pipeline commands of the ``lumijax`` CLI: tune, codesign, plan, run, bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lumijax import cli, convert, layers, wdm
from lumijax import hardware as hw

FIXTURES = Path(__file__).resolve().parent.parent / "export" / "tests" / "fixtures"
TINY = dict(vocab_size=16, n_positions=8, n_embd=16, n_layer=1, n_head=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A one-layer GPT on 4-bit noisy hardware, and 64 token windows with
    their next tokens as .npz."""
    root = tmp_path_factory.mktemp("cli")
    model = convert.recipe("gpt2", hardware=hw.HardwareConfig(channel_spacing_nm=0.4), mode="noisy", weight_bits=4, **TINY)
    ids = np.random.default_rng(0).integers(0, 16, (64, 9))
    np.savez(root / "tokens.npz", inputs=ids[:, :8], targets=ids[:, 1:])
    return {"model": convert.save(model, root / "tiny.msgpack"), "data": root / "tokens.npz", "root": root}


def test_tune_trains_and_writes_the_model(files, capsys):
    out, plot = files["root"] / "tuned.msgpack", files["root"] / "tuned.png"
    code = cli.main(["tune", str(files["model"]), "--data", str(files["data"]), "--steps", "3", "--batch-size", "16",
                     "--learning-rate", "0.01", "--out", str(out), "--plot", str(plot)])
    assert code == 0, capsys.readouterr().err
    assert "accuracy" in capsys.readouterr().out
    before, after = convert.load(files["model"]), convert.load(out)
    assert not np.allclose(before.transformer.h[0].mlp.c_fc.kernel[...], after.transformer.h[0].mlp.c_fc.kernel[...])
    assert all(core.mode == "noisy" for core in layers.photonic_cores(after))
    assert plot.stat().st_size > 10_000


def test_codesign_moves_the_spacing_and_saves_it(files, capsys):
    out = files["root"] / "codesigned.msgpack"
    code = cli.main(["codesign", str(files["model"]), "--data", str(files["data"]), "--steps", "3", "--batch-size", "16",
                     "--band-weight", "5", "--min-spacing-nm", "0.2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    spacings = {float(c.channel_spacing_nm[...]) for c in layers.photonic_cores(convert.load(out))}
    assert len(spacings) == 1 and 0.2 <= spacings.pop() < 0.4


@pytest.mark.parametrize("argv, message", [
    (["tune", "MISSING.msgpack", "--out", "x.msgpack"], "MISSING.msgpack"),
    (["tune", "{model}", "--data", "{bad}", "--out", "x.msgpack"], "no array named inputs"),
    (["codesign", "{model}", "--steps", "0", "--out", "x.msgpack"], "--steps 0"),
    (["codesign", "{model}", "--min-spacing-nm", "0.5", "--out", "x.msgpack"], "spacing range must hold the start"),
    (["plan", "MISSING.msgpack"], "MISSING.msgpack"),
    (["run", "{bad}", "--input", "{data}"], "lumijax run"),
    (["bench", "{bad}"], "lumijax bench"),
])
def test_pipeline_commands_fail_with_one_clear_line(files, capsys, argv, message):
    bad = files["root"] / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    argv = [a.format(model=files["model"], data=files["data"], bad=bad) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_plan_writes_the_wdm_map_and_spectrum(files, capsys):
    out, plot = files["root"] / "plan.json", files["root"] / "spectrum.png"
    assert cli.main(["plan", str(files["model"]), "--out", str(out), "--plot", str(plot)]) == 0
    plan = json.loads(out.read_text())
    model = convert.load(files["model"])
    assert [op["name"] for op in plan["ops"]] == [op.name for op in wdm.photonic_ops(model)]
    assert all(op["spacing_nm"] * plan["hardware"]["num_channels"] <= plan["hardware"]["fsr_nm"] for op in plan["ops"])
    assert plot.stat().st_size > 10_000 and "WDM plan" in capsys.readouterr().out


def test_run_reproduces_the_conformance_outputs(tmp_path, capsys):
    out = tmp_path / "y.npy"
    assert cli.main(["run", str(FIXTURES / "resnet.lmn"), "--input", str(FIXTURES / "resnet.io.npz"), "--output", str(out)]) == 0
    expected = np.load(FIXTURES / "resnet.io.npz")["ideal"]
    assert np.abs(np.load(out) - expected).max() <= 1e-4 * np.abs(expected).max()
    assert cli.main(["bench", str(FIXTURES / "resnet.lmn"), "--iterations", "2"]) == 0
    assert "median" in capsys.readouterr().out
