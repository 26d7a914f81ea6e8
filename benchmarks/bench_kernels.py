"""Native kernels against XLA (jnp) and torch, side by side in one process.

* complex64 GEMM through ``jit``: 64×(64³), 256³, 1024³, 2048³;
* quantized complex GEMM at 1024³ (6-bit activations × 4-bit weights, and
  8 × 8) against torch complex64 matmul;
* fused causal softmax (4, 12, 1024, 1024) forward against jnp where+softmax
  and torch masked_fill+softmax, backward against ``jax.grad`` of the jnp
  reference.

Prints a table and writes ``benchmarks/results/kernels.json``. Run with
``make bench``; set ``LUMIJAX_BENCH_QUICK=1`` for smaller shapes.
"""

from __future__ import annotations

import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from common import compare, machine, write
from lumijax import kernels

QUICK = os.environ.get("LUMIJAX_BENCH_QUICK") == "1"
THREADS = int(os.environ.get("RAYON_NUM_THREADS", os.cpu_count() or 1))
# fp32 peak of the 2-core AVX2 machines this project targets (DESIGN §6):
# 2 cores × 2 FMA units × 8 lanes × 2 flops × ~3 GHz.
PEAK_GFLOPS = 190.0


def complex_gemm(rows: list) -> None:
    rng = np.random.default_rng(0)
    shapes = [(64, 64, 64, 64), (1, 256, 256, 256), (1, 1024, 1024, 1024), (1, 2048, 2048, 2048)]
    if QUICK:
        shapes = shapes[:3]
    for batch, m, k, n in shapes:
        a = (rng.standard_normal((batch, m, k)) + 1j * rng.standard_normal((batch, m, k))).astype(np.complex64)
        b = (rng.standard_normal((batch, k, n)) + 1j * rng.standard_normal((batch, k, n))).astype(np.complex64)
        ja, jb = jnp.asarray(a), jnp.asarray(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        native = jax.jit(kernels.matmul)
        xla = jax.jit(jnp.matmul)
        rounds = 3 if m >= 2048 else (7 if m >= 1024 else 25)
        t = compare({
            "lumijax": lambda: native(ja, jb).block_until_ready(),
            "xla": lambda: xla(ja, jb).block_until_ready(),
            "torch": lambda: torch.matmul(ta, tb),
        }, rounds)
        t_native, t_xla, t_torch = t["lumijax"], t["xla"], t["torch"]
        flops = 8.0 * batch * m * k * n
        name = f"{batch}×({m}×{k}×{n})" if batch > 1 else f"{m}×{k}×{n}"
        rows.append({
            "kernel": "complex GEMM c64 (jit)", "shape": name,
            "lumijax_ms": t_native * 1e3, "xla_ms": t_xla * 1e3, "torch_ms": t_torch * 1e3,
            "lumijax_gflops": flops / t_native / 1e9,
            "fraction_of_peak": flops / t_native / 1e9 / PEAK_GFLOPS,
            "vs_xla": t_xla / t_native, "vs_torch": t_torch / t_native,
            "target": "≥3× XLA (batched)" if batch > 1 else "≥1.0× torch",
        })


def quantized_gemm(rows: list) -> None:
    rng = np.random.default_rng(1)
    size = 512 if QUICK else 1024
    a = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))).astype(np.complex64)
    ta, tb = torch.from_numpy(a), torch.from_numpy(a.T.copy())
    contenders = {"torch": lambda: torch.matmul(ta, tb)}
    cases = [(6, 4, "≥3× torch c64"), (8, 8, "as measured")]
    for x_bits, w_bits, _ in cases:
        xr, xi = (jnp.asarray(rng.integers(0, 1 << x_bits, (size, size), dtype=np.uint8)) for _ in range(2))
        lo, hi = -(1 << (w_bits - 1)), 1 << (w_bits - 1)
        wr, wi = (rng.integers(lo, hi, (size, size)).astype(np.int8) for _ in range(2))
        packed = w_bits <= 4
        if packed:
            wr, wi = kernels.pack_int4(wr), kernels.pack_int4(wi)
        operands = (xr, xi, jnp.asarray(wr), jnp.asarray(wi), jnp.full(size, 0.01, jnp.float32))
        product = jax.jit(partial(_quantized_product, x_bits=x_bits, w_bits=w_bits, packed=packed))
        contenders[f"{x_bits}x{w_bits}"] = partial(lambda p, ops: p(*ops).block_until_ready(), product, operands)
    t = compare(contenders, 11)
    for x_bits, w_bits, target in cases:
        t_q = t[f"{x_bits}x{w_bits}"]
        rows.append({
            "kernel": f"quantized complex GEMM {x_bits}b act × {w_bits}b wt", "shape": f"{size}³",
            "lumijax_ms": t_q * 1e3, "torch_ms": t["torch"] * 1e3, "vs_torch": t["torch"] / t_q, "target": target,
            "lumijax_gflops_equivalent": 8.0 * size**3 / t_q / 1e9,
        })


def _quantized_product(xr, xi, wr, wi, sw, *, x_bits, w_bits, packed):
    return kernels.quantized_matmul(
        (xr, xi), (wr, wi), x_scale=0.01, x_bits=x_bits, w_scale=sw, w_bits=w_bits, packed=packed
    )


def _chained(fn, x):
    """Calls ``x = fn(x)`` repeatedly: a jit with a donated argument may
    overwrite it, so each call consumes the previous result."""
    state = [x]

    def step():
        state[0] = fn(state[0])
        state[0].block_until_ready()

    return step


def causal_softmax(rows: list) -> None:
    rng = np.random.default_rng(2)
    shape = (1, 12, 512, 512) if QUICK else (4, 12, 1024, 1024)
    scale = 0.125
    x = rng.standard_normal(shape).astype(np.float32)
    tx = torch.from_numpy(x)
    t_, s_ = shape[-2:]
    mask = torch.triu(torch.ones(t_, s_, dtype=torch.bool), diagonal=1)
    native = lambda x: kernels.causal_softmax(x, scale)
    reference = lambda x: kernels.causal_softmax_reference(x, scale)
    contenders = {"torch": lambda: torch.softmax((tx * scale).masked_fill(mask, float("-inf")), dim=-1)}
    modes = (("new output", ()), ("in place (donated logits)", (0,)))
    for mode, donate in modes:
        contenders[f"lumijax {mode}"] = _chained(jax.jit(native, donate_argnums=donate), jnp.asarray(x))
        contenders[f"xla {mode}"] = _chained(jax.jit(reference, donate_argnums=donate), jnp.asarray(x))
    t = compare(contenders, 5)
    for mode, _ in modes:
        t_native, t_jnp = t[f"lumijax {mode}"], t[f"xla {mode}"]
        rows.append({
            "kernel": f"causal softmax fwd, {mode}", "shape": str(shape),
            "lumijax_ms": t_native * 1e3, "xla_ms": t_jnp * 1e3, "torch_ms": t["torch"] * 1e3,
            "vs_xla": t_jnp / t_native, "vs_torch": t["torch"] / t_native, "target": "≥5× both",
        })
    jx = jnp.asarray(x)
    dp = jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    grad_native = jax.jit(jax.grad(lambda x: jnp.sum(native(x) * dp)))
    grad_jnp = jax.jit(jax.grad(lambda x: jnp.sum(reference(x) * dp)))
    t = compare({
        "lumijax": lambda: grad_native(jx).block_until_ready(),
        "xla": lambda: grad_jnp(jx).block_until_ready(),
    }, 5)
    t_native, t_jnp = t["lumijax"], t["xla"]
    rows.append({
        "kernel": "causal softmax fwd+bwd (grad)", "shape": str(shape),
        "lumijax_ms": t_native * 1e3, "xla_ms": t_jnp * 1e3, "vs_xla": t_jnp / t_native, "target": "as measured",
    })


def main() -> None:
    torch.set_num_threads(THREADS)
    rows: list[dict] = []
    complex_gemm(rows)
    quantized_gemm(rows)
    causal_softmax(rows)
    table = Table(title=f"lumijax kernels, {THREADS} threads (ratios: time of peer / time of lumijax)")
    for column in ("kernel", "shape", "lumijax ms", "XLA ms", "torch ms", "× XLA", "× torch", "target"):
        table.add_column(column, justify="left" if column in ("kernel", "shape", "target") else "right")
    fmt = lambda row, key, spec: format(row[key], spec) if key in row else "—"
    for row in rows:
        table.add_row(
            row["kernel"], row["shape"], fmt(row, "lumijax_ms", ".2f"), fmt(row, "xla_ms", ".2f"),
            fmt(row, "torch_ms", ".2f"), fmt(row, "vs_xla", ".2f"), fmt(row, "vs_torch", ".2f"), row["target"],
        )
    Console(width=140).print(table)
    path = write("kernels", {"machine": machine(), "threads": THREADS, "quick": QUICK, "peak_gflops_assumed": PEAK_GFLOPS, "rows": rows})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
