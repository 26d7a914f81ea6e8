"""Hardware-aware fine-tuning of a small character GPT.

A two-layer HF GPT-2 (64 wide, 4 heads, 64 characters of context) is
trained in torch on the topic help that ships with CPython, converted, and
put on the same 4-bit photonic core as the ResNet example (4-bit weights
and converters, detector noise, 0.4 nm channel spacing). The converters'
ranges are calibrated on training text first; fine-tuning under the
hardware model (gradients clipped to norm 1) then brings the held-out
perplexity back towards the ideal.

    python examples/finetune_gpt_text.py [--out out/gpt] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import optax
from rich.console import Console
from rich.table import Table

from lumijax import convert, tune, zoo
from lumijax import hardware as hw

HARDWARE = hw.HardwareConfig(channel_spacing_nm=0.4, dac_bits=4, adc_bits=4)
WEIGHT_BITS = 4
CONTEXT = 64


def perplexity(model, data: tune.Data) -> float:
    """``exp`` of the mean next-character cross-entropy."""
    return math.exp(tune.evaluate(model, data, batch_size=64)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/gpt", help="folder for the checkpoint, plot and results")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak of the warm-up/cosine Adam schedule")
    args = parser.parse_args()
    console, out = Console(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = zoo.python_docs_text()
    test = zoo.windows(text.test_ids, CONTEXT)
    train = zoo.windows(text.train_ids, CONTEXT, 64 * args.steps, seed=1)

    torch_model = zoo.cached_text_gpt(out / "docs_gpt.pt", context=CONTEXT, console=console)
    ideal = perplexity(convert.from_torch_recipe(torch_model), test)
    model = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode="noisy", weight_bits=WEIGHT_BITS)
    tune.calibrate_ranges(model, train[0][:512])
    before = perplexity(model, test)
    start = time.perf_counter()
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), tune.warmup_cosine_adam(args.learning_rate, args.steps))
    history = tune.finetune(model, train, optimizer=optimizer, steps=args.steps)
    seconds = time.perf_counter() - start
    after = perplexity(model, test)

    table = Table(title=f"character GPT on CPython's topic help ({len(text.vocabulary)} characters, {len(test[0])} held-out "
                        f"windows): {WEIGHT_BITS}-bit weights and converters, {HARDWARE.channel_spacing_nm} nm, noisy")
    for column in ("model", "held-out perplexity"):
        table.add_column(column)
    table.add_row("ideal (float)", f"{ideal:.3f}")
    table.add_row("on the hardware, before fine-tuning", f"{before:.3f}")
    table.add_row(f"on the hardware, after {args.steps} steps ({seconds:.0f} s)", f"{after:.3f}")
    console.print(table)
    figure = history.plot(out / "gpt_finetune_history.png")
    results = {"ideal": ideal, "before": before, "after": after, "steps": args.steps, "seconds": seconds,
               "hardware": HARDWARE.to_dict(), "weight_bits": WEIGHT_BITS}
    (out / "gpt_finetune.json").write_text(json.dumps(results, indent=2))
    console.print(f"curves in {figure}, numbers in {out / 'gpt_finetune.json'}")


if __name__ == "__main__":
    main()
