"""Conversion coverage: every architecture of the zoo through
``convert.from_torch``, with default settings.

For each model of :mod:`coverage_zoo` (HF transformers, torchvision, torch.nn
layers, a U-Net and the pretrained MiniLM):

* ``converts``: ``from_torch`` returns a program (else the error's first
  line);
* ``output``: parity of the ideal program's first output with torch's,
  ``max|Δ| / max|torch|``;
* ``input grad``: the same for the gradient of ``Σ output·probe`` (a fixed
  random probe) with respect to a floating-point input (token inputs have
  none), and ``weight grad`` for the gradients of every torch parameter;
  both with model and program in float64 (``jax.enable_x64``), which
  checks the semantics: in float32 a pre-activation within rounding of a
  ReLU's kink can land on the other side of it in one of the two
  summation orders, and the gradient through that one unit then differs
  by its whole size. ``grad f32`` is the larger of the two in float32,
  as a user's training step sees them;
* ``photonic``: the photonic share of one forward pass's FLOPs
  (:func:`lumijax.convert.summarize`);
* ``noisy``: the default hardware in ``"noisy"`` mode (8-bit converters and
  weights, 1 mW per channel) gives finite outputs; ``Δ noisy`` is their
  deviation from torch, ``max|Δ| / max|torch|``;
* ``noise / SNR``: whether the noise is what the SNR says. With 12-bit
  converters whose ranges are calibrated on the batch (``observe=True``),
  the noisy−expected deviation (RMS) at 1 mW and at 0.25 mW per
  channel, same noise draws: their ratio divided by the detector noise ratio
  ``√(SNR(1 mW)/SNR(0.25 mW))`` from :func:`lumijax.hardware.snr`. 1.00 when
  the model passes the detector noise on linearly.

Parity ≤ 1e-4 is the target. Prints the table and writes
``benchmarks/results/coverage.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from rich.console import Console
from rich.table import Table

from common import RESULTS, machine, relative_error, write
from coverage_zoo import ZOO, Case
from lumijax import convert, layers
from lumijax import hardware as hw

PARITY = 1e-4
POWERS_MW = (1.0, 0.25)
SNR_BITS = 12


def first_output(value):
    """The first array of a (possibly nested) model output."""
    return torch.utils._pytree.tree_leaves(value)[0]


def torch_reference(case: Case, probe: np.ndarray | None):
    """Torch's first output and, given a probe, the gradients of ``Σ
    output·probe``: of the floating-point inputs and of each parameter, by
    the tuple of its names (a tied weight has several)."""
    module = case.module
    inputs = [t.clone().requires_grad_(t.is_floating_point()) for t in case.inputs]
    output = first_output(module(*inputs, **case.kwargs))
    if probe is None:
        return output.detach().numpy(), None, None
    module.zero_grad()
    (output * torch.from_numpy(probe)).sum().backward()
    input_grads = [t.grad.numpy() for t in inputs if t.is_floating_point()]
    names: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    weights = {tuple(names[id(p)]): p.grad.numpy() for p in module.parameters() if p.grad is not None}
    return output.detach().numpy(), input_grads, weights


def program_call(program: nnx.Module):
    """A jitted ``(state, *inputs) → first output`` and the program's state."""
    graphdef, state = nnx.split(program)

    def run(state, *inputs):
        return jax.tree_util.tree_leaves(nnx.merge(graphdef, state)(*inputs))[0]

    return jax.jit(run), state


def gradients(program: nnx.Module, arrays: list, probe: np.ndarray) -> tuple[list, dict]:
    """Gradients of ``Σ output·probe``: of the floating-point inputs, and of
    each torch-named weight in torch's layout."""
    graphdef, params, rest = nnx.split(program, nnx.Param, ...)
    floating = [i for i, a in enumerate(arrays) if np.issubdtype(np.asarray(a).dtype, np.floating)]

    def loss(params, *inputs):
        out = jax.tree_util.tree_leaves(nnx.merge(graphdef, params, rest)(*inputs))[0]
        return jnp.sum(out * probe)

    grads = jax.jit(jax.grad(loss, argnums=(0, *[1 + i for i in floating])))(params, *arrays)
    flat = {path: leaf for path, leaf in nnx.to_flat_state(grads[0])}
    paths = {id(node): path for path, node in nnx.iter_graph(program) if isinstance(node, nnx.Variable)}
    weights = {}
    for name, slot in program.torch_slots().items():
        path = paths.get(id(slot.variable))
        if path in flat:
            leaf = flat[path]
            weights[name] = np.asarray(slot.to_torch(leaf.get_value() if hasattr(leaf, "get_value") else leaf))
    return [np.asarray(g) for g in grads[1:]], weights


def noise_ratio(program: nnx.Module, arrays: list) -> float:
    """Measured over predicted growth of the noisy−expected deviation from
    ``POWERS_MW[0]`` to ``POWERS_MW[1]`` (12-bit converters)."""
    deviations, snrs = [], []
    calibrated = layers.set_mode(nnx.clone(program), "expected")
    for core in layers.photonic_cores(calibrated):
        core.input_bits = core.output_bits = SNR_BITS
    calibrated(*arrays, observe=True)  # converter ranges fixed by the batch, as before deployment
    call, state = program_call(calibrated)
    expected = np.asarray(call(state, *arrays), np.float64)
    for power in POWERS_MW:
        model = nnx.clone(calibrated)
        for core in layers.photonic_cores(model):
            core.hardware = core.hardware.replace(laser_power_mW=power)
        snrs.append(float(hw.snr(model.factory.hardware.replace(laser_power_mW=power), include_crosstalk=False)))
        call, state = program_call(layers.set_mode(model, "noisy"))
        deviations.append(np.sqrt(np.mean((np.asarray(call(state, *arrays), np.float64) - expected) ** 2)))
    return float(deviations[1] / deviations[0] / np.sqrt(snrs[0] / snrs[1]))


def gradient_parity(case: Case, program: nnx.Module, probe: np.ndarray) -> dict:
    """Parity of the input gradients (the largest, ``None`` without
    floating-point inputs) and of all parameter gradients (one flat vector),
    and the torch parameters the program has no gradient for."""
    arrays = [t.numpy() for t in (*case.inputs, *case.kwargs.values())]
    _, input_grads, weight_grads = torch_reference(case, probe)
    ours_inputs, ours_weights = gradients(program, arrays, probe)
    pairs, missing = [], []
    for names, grad in weight_grads.items():
        ours = next((ours_weights[n] for n in names if n in ours_weights), None)
        if ours is None:
            missing.append(names[0])
        else:
            pairs.append((ours.ravel(), grad.ravel()))
    return {
        "input": max((relative_error(a, b) for a, b in zip(ours_inputs, input_grads)), default=None),
        "weight": relative_error(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])),
        "missing": sorted(missing),
    }


def in_float64(case: Case) -> Case:
    """A float64 copy of the case: module and floating-point inputs."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    return Case(case.family, copy.deepcopy(case.module).double(), tuple(cast(t) for t in case.inputs),
                {k: cast(v) for k, v in case.kwargs.items()})


def measure(name: str) -> dict:
    case = ZOO[name]()
    row: dict = {"family": case.family, "parameters": sum(p.numel() for p in case.module.parameters())}
    arrays = [t.numpy() for t in (*case.inputs, *case.kwargs.values())]
    t0 = time.perf_counter()
    try:
        program = convert.from_torch(case.module, case.inputs, example_kwargs=case.kwargs)
    except convert.ConversionError as err:
        row.update(converts=False, error=str(err).splitlines()[0] + " " + " ".join(str(err).splitlines()[1:3]))
        return row
    row["convert_s"] = time.perf_counter() - t0
    with torch.no_grad():
        reference = torch_reference(case, None)[0]
    probe = np.random.default_rng(0).normal(size=reference.shape)
    call, state = program_call(program)
    row.update(converts=True, output=relative_error(call(state, *arrays), reference))
    single = gradient_parity(case, program, probe.astype(np.float32))
    row["grad_f32"] = max(v for v in (single["input"], single["weight"]) if v is not None)
    with jax.enable_x64(True):
        case64 = in_float64(case)
        double = gradient_parity(case64, convert.from_torch(case64.module, case64.inputs, example_kwargs=case64.kwargs),
                                 probe)
    row.update(input_grad=double["input"], weight_grad=double["weight"], weights_without_grad=double["missing"])
    row["photonic_share"] = convert.summarize(program).photonic_share
    noisy = layers.set_mode(nnx.clone(program), "noisy")
    call, state = program_call(noisy)
    out = np.asarray(call(state, *arrays))
    row["noisy_finite"] = bool(np.isfinite(out).all())
    row["noisy_deviation"] = relative_error(out, reference)
    row["noise_over_snr"] = noise_ratio(program, arrays)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="zoo entries to rerun, their rows replaced in coverage.json (default: all)")
    args = parser.parse_args()
    names = args.only or list(ZOO)
    torch.set_num_threads(2)
    rows = {}
    with jax.default_matmul_precision("highest"):
        for name in names:
            t0 = time.perf_counter()
            try:
                rows[name] = measure(name)
            except Exception as err:  # a failure of one model is a row of the table
                traceback.print_exc()
                rows[name] = {"converts": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
            rows[name]["seconds"] = time.perf_counter() - t0
            print(name, {k: v for k, v in rows[name].items() if k != "weights_without_grad"}, flush=True)

    def number(value, digits: str = ".1e") -> str:
        return "—" if value is None else format(value, digits)

    table = Table(title="conversion coverage (ideal parity: max|Δ| / max|torch|)")
    for column in ("model", "family", "converts", "output", "input grad", "weight grad", "grad f32", "photonic", "noisy",
                   "Δ noisy", "noise / SNR"):
        table.add_column(column, justify="left" if column in ("model", "family") else "right")
    for name, row in rows.items():
        if not row.get("converts"):
            table.add_row(name, row.get("family", ""), "[red]no[/red]", row.get("error", "")[:80], *[""] * 7)
            continue
        ok = max(v for v in (row["output"], row["input_grad"], row["weight_grad"]) if v is not None) <= PARITY
        table.add_row(name, row["family"], "yes" if ok else "[yellow]yes[/yellow]", number(row["output"]),
                      number(row["input_grad"]), number(row["weight_grad"]), number(row["grad_f32"]), f"{100 * row['photonic_share']:.1f} %",
                      "finite" if row["noisy_finite"] else "[red]not finite[/red]", number(row["noisy_deviation"], ".3f"),
                      number(row["noise_over_snr"], ".2f"))
    Console(width=150).print(table)
    converted = [r for r in rows.values() if r.get("converts")]
    at_parity = [r for r in converted if max(v for v in (r["output"], r["input_grad"], r["weight_grad"]) if v is not None) <= PARITY]
    print(f"{len(converted)}/{len(rows)} convert, {len(at_parity)} at parity ≤ {PARITY:g}, "
          f"{sum(r['noisy_finite'] for r in converted)} noisy-finite")
    previous = RESULTS / "coverage.json"
    if args.only and previous.exists():  # a rerun of some models replaces their rows
        rows = {**json.loads(previous.read_text())["models"], **rows}
    path = write("coverage", {"machine": machine(), "parity_target": PARITY, "powers_mW": list(POWERS_MW),
                              "snr_bits": SNR_BITS, "models": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
