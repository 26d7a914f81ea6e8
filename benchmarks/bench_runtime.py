"""The pure-Rust ``.lmn`` runtime against its peers, side by side.

* Cold start: ``lmn run`` of a small GPT (process start, open, validate,
  first inference, write) against ``python -c "import jax"``.
* Header: parse and validate the header of a ResNet-18 ``.lmn`` (preamble,
  msgpack header, tensor table, graph and shape inference; ``lmn bench``)
  against a safetensors load of the same weights; the full open (checksum
  and tensor contents too) is reported beside it.
* Latency: torchvision ResNet-18 (224×224, ideal mode) at batch 1 and 8,
  the runtime through ``lumijax.runtime`` against onnxruntime and tract on the
  same model exported with ``torch.onnx``; onnxruntime and the runtime use
  all cores, tract runs on one.

Targets (DESIGN.md §6 and the export issue): cold start < 100 ms, header
< 1 ms, latency ≥ 1.0× onnxruntime and tract. Writes
``benchmarks/results/runtime.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torchvision
import tract
from rich.console import Console
from rich.table import Table
from safetensors.numpy import load_file
from safetensors.torch import save_file

from common import compare, machine, write
from lumijax import convert, peg, lmn, runtime


def wall(command: list, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def cold_start(work: Path, binary: Path) -> dict:
    model = convert.recipe("gpt2", vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, seed=0)
    ids = np.random.default_rng(0).integers(0, 96, (1, 64)).astype(np.int32)
    lmn.write(peg.build(model, [ids]), work / "gpt.lmn")
    np.save(work / "ids.npy", ids)
    lmn_s = wall([binary, "run", work / "gpt.lmn", "--input", work / "ids.npy", "--output", work / "out.npy"], 15)
    jax_s = wall([sys.executable, "-c", "import jax"], 5)
    return {"lmn_run_ms": 1e3 * lmn_s, "python_import_jax_ms": 1e3 * jax_s, "target_ms": 100.0}


def header(work: Path, binary: Path, torch_model: torch.nn.Module) -> dict:
    model = convert.from_torch_recipe(torch_model)
    lmn.write(peg.build(model, [np.zeros((1, 3, 224, 224), np.float32)]), work / "resnet18.lmn")
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, work / "resnet18.safetensors")
    stats = [json.loads(subprocess.run([binary, "bench", work / "resnet18.lmn", "--iterations", "1", "--json"],
                                       check=True, capture_output=True, text=True).stdout) for _ in range(7)]
    safetensors_s = compare({"safetensors": lambda: load_file(work / "resnet18.safetensors")}, settle_s=0.2)["safetensors"]
    return {
        "header_parse_validate_ms": statistics.median(s["header_ms"] for s in stats),
        "open_validate_all_ms": statistics.median(s["open_ms"] for s in stats),
        "safetensors_load_ms": 1e3 * safetensors_s,
        "file_bytes": (work / "resnet18.lmn").stat().st_size,
        "target_ms": 1.0,
    }


def latency(work: Path, torch_model: torch.nn.Module, batch: int) -> dict:
    x = np.random.default_rng(batch).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    onnx_path = work / f"resnet18_b{batch}.onnx"
    torch.onnx.export(torch_model, (torch.from_numpy(x),), onnx_path, dynamo=False, input_names=["x"], output_names=["y"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = os.cpu_count(), 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    onnx_model = tract.onnx().load(str(onnx_path))
    onnx_model.set_input_fact(0, f"{batch},3,224,224,f32")
    tract_runnable = onnx_model.into_model().into_runnable()
    model = convert.from_torch_recipe(torch_model)
    lmn.write(peg.build(model, [x]), work / f"resnet18_b{batch}.lmn")
    ours = runtime.load(work / f"resnet18_b{batch}.lmn")
    reference = session.run(None, {"x": x})[0]
    agreement = float(np.abs(ours.run([x])[0] - reference).max() / np.abs(reference).max())
    times = compare({
        "lumijax": lambda: ours.run([x]),
        "onnxruntime": lambda: session.run(None, {"x": x}),
        "tract": lambda: tract_runnable.run([x]),
    }, repeats=7 if batch == 1 else 5)
    return {
        "ms": {k: 1e3 * v for k, v in times.items()},
        "speedup_vs_onnxruntime": times["onnxruntime"] / times["lumijax"],
        "speedup_vs_tract": times["tract"] / times["lumijax"],
        "max_relative_difference_to_onnxruntime": agreement,
        "target_speedup": 1.0,
    }


def main() -> None:
    console = Console()
    binary = runtime.lmn_binary()
    if binary is None:
        raise SystemExit("build the lmn binary first (make bench builds it)")
    torch.manual_seed(0)
    torch_model = torchvision.models.resnet18().eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {"cold_start": cold_start(work, binary), "header": header(work, binary, torch_model)}
        for batch in (1, 8):
            results[f"resnet18_batch{batch}"] = latency(work, torch_model, batch)
    results["machine"] = machine()
    table = Table(title="lmn runtime vs peers (ms, median)")
    for column in ("benchmark", "lumijax", "peer", "ratio", "target"):
        table.add_column(column)
    c, h = results["cold_start"], results["header"]
    table.add_row("cold start: lmn run small GPT vs import jax", f"{c['lmn_run_ms']:.1f}", f"{c['python_import_jax_ms']:.1f}",
                  f"{c['python_import_jax_ms'] / c['lmn_run_ms']:.1f}×", "< 100 ms")
    table.add_row("ResNet-18 header parse+validate vs safetensors load", f"{h['header_parse_validate_ms']:.2f}", f"{h['safetensors_load_ms']:.2f}",
                  f"{h['safetensors_load_ms'] / h['header_parse_validate_ms']:.1f}×", "< 1 ms")
    table.add_row("  full open (checksum, contents)", f"{h['open_validate_all_ms']:.2f}", "", "", "")
    for batch in (1, 8):
        r = results[f"resnet18_batch{batch}"]
        for peer in ("onnxruntime", "tract"):
            table.add_row(f"ResNet-18 batch {batch} vs {peer}", f"{r['ms']['lumijax']:.1f}", f"{r['ms'][peer]:.1f}",
                          f"{r['speedup_vs_' + peer]:.2f}×", "≥ 1.0×")
    console.print(table)
    console.print(f"results written to {write('runtime', results)}")


if __name__ == "__main__":
    main()
