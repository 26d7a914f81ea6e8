"""Hardware-aware training steps, side by side with plain torch and the
photonic / analog libraries a user could pick instead.

On each network, the same batch and Adam (learning rate 1e-4):

* ``torch``: float training of the torch model (the floor);
* ``lumijax ideal``, ``expected`` and ``noisy``: the converted model (4-bit
  weights, DACs and ADCs, 16-channel banks at 0.4 nm; converter ranges
  calibrated on the batch first, as before tuning) through
  :class:`lumijax.tune.TrainingStep`, the step :func:`lumijax.tune.finetune`
  runs;
* ``torchonn``: pytorch-onn 0.0.8's MZI block layers (``MZIBlockConv2d``/
  ``Linear``, 16×16 blocks, 4-bit inputs and phases, phase noise σ = 0.02
  rad) in place of every convolution and linear layer. Its phase mode (the
  one that applies phase noise and weight bits) needs its CUDA extension to
  decompose the blocks, and its microring block layers do not construct in
  that release, so on a CPU the row that runs is the ``usv`` mode (the
  weights as U·Σ·V, 4-bit LSQ inputs), and the phase-mode row reports its
  error;
* ``aihwkit``: IBM's ``convert_to_analog`` with a ``TorchInferenceRPUConfig``
  (4-bit input and output converters, output noise, additive weight noise
  in training, the PCM noise model). The C++ tiles of the 1.1.0 wheel do not
  run on the pinned torch; the torch tiles do.

Every contender runs under the same host allocator settings: glibc keeps
the memory a step frees (:func:`lumijax.hostmem.retain_freed_memory`, set
before the first contender is built, so torch runs with it too), and the
lumijax forward pass is compiled with :func:`lumijax.hostmem.compiler_options`
as :class:`lumijax.tune.TrainingStep` compiles the step.

The networks: the digits ResNet-10 (8×8 images, batch 64), a torchvision
ResNet-18 with a small-image stem at 32×32 (batch 64) and the character
GPT-2 (2 layers, width 64, context 64, batch 32; the peers replace its
``Conv1D`` projections by ``nn.Linear`` and run attention's products in
float). Each contender is warmed up, then timed once a round over several
interleaved rounds (the median is reported); the forward pass is timed
alone too (inference, no gradient). Prints the table of ms and ratios to the torch step and writes
``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from rich.console import Console
from rich.table import Table

from common import compare, machine, write
from lumijax import convert, hostmem, layers, tune, zoo
from lumijax import hardware as hw

HARDWARE = hw.HardwareConfig(channel_spacing_nm=0.4, dac_bits=4, adc_bits=4)
BITS = 4
LEARNING_RATE = 1e-4
PHASE_NOISE_RAD = 0.02
MODES = ("ideal", "expected", "noisy")


# ---------------------------------------------------------------------------
# The networks


def digits_resnet10():
    split = zoo.digits()
    return zoo.digits_resnet((1, 1, 1, 1)), split.x_train[:64], split.y_train[:64].astype(np.int64)


def resnet18_32():
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    rng = np.random.default_rng(0)
    return model, rng.random((64, 3, 32, 32), np.float32), rng.integers(0, 10, 64)


def char_gpt():
    text = zoo.python_docs_text()
    inputs, targets = zoo.windows(text.train_ids, 64, 32)
    return zoo.text_gpt(len(text.vocabulary)), inputs.astype(np.int64), targets.astype(np.int64)


NETWORKS = {"digits ResNet-10": digits_resnet10, "ResNet-18 32×32": resnet18_32, "char GPT-2": char_gpt}


def logits_of(output):
    return output.logits if hasattr(output, "logits") else output


# ---------------------------------------------------------------------------
# Contenders: each returns (step, forward), callables that block until done


def torch_contender(model, x, y):
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), LEARNING_RATE)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        loss = torch.nn.functional.cross_entropy(logits_of(model(x)).flatten(0, -2), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def forward():
        with torch.no_grad():
            logits_of(model(x))

    return step, forward


def lumijax_contender(torch_model, x, y, mode):
    model = convert.from_torch_recipe(torch_model, hardware=HARDWARE, mode=mode, weight_bits=BITS)
    layers.set_mode(model, mode)
    if mode != "ideal":  # converter ranges set once before tuning, as the tuning guide does it
        tune.calibrate_ranges(model, x)
    model.eval()
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=tune.WEIGHTS_AND_SCALES)

    def loss_fn(model, x, y):
        loss, accuracy = tune.cross_entropy(model(x), y)
        return loss, (loss, accuracy)

    train_step = tune.TrainingStep(loss_fn, model, optimizer)  # as tune.finetune runs it
    graphdef = nnx.graphdef(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x), compiler_options=hostmem.compiler_options())
    infer = lambda x: forward(train_step.state[0], x)  # the model's state, as the step leaves it
    x, y, key = jnp.asarray(x), jnp.asarray(y), jax.random.key(0)
    return (lambda: jax.block_until_ready(train_step(x, y, key)), lambda: jax.block_until_ready(infer(x)))


def _replace_modules(model, make):
    """Replaces every ``nn.Conv2d`` and ``nn.Linear`` (and HF ``Conv1D``, as a
    linear layer) of ``model`` by ``make(module)``, in place."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_children()):
        if isinstance(module, Conv1D):
            linear = torch.nn.Linear(module.weight.shape[0], module.nf)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            module = linear
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            setattr(model, name, make(module))
        else:
            _replace_modules(module, make)
    return model


def _untie_head(model):
    """A GPT's output head on its own weights (the peers convert a layer,
    not a tied embedding)."""
    if hasattr(model, "lm_head"):
        head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
        with torch.no_grad():
            head.weight.copy_(model.lm_head.weight)
        model.lm_head = head
        model.config.tie_word_embeddings = False
    return model


def torchonn_contender(model, x, y, mode):
    from torchonn.layers import MZIBlockConv2d, MZIBlockLinear

    block = (1, 1, HARDWARE.num_channels, HARDWARE.num_channels)

    def make(module):
        bias = module.bias is not None
        if isinstance(module, torch.nn.Conv2d):
            layer = MZIBlockConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                   module.padding, bias=bias, miniblock=block, mode=mode)
        else:
            layer = MZIBlockLinear(module.in_features, module.out_features, bias=bias, miniblock=block, mode=mode)
        layer.set_weight_bitwidth(BITS)
        layer.set_input_bitwidth(BITS)
        layer.set_phase_variation(PHASE_NOISE_RAD)
        return layer

    return torch_contender(_replace_modules(_untie_head(model), make), x, y)


def aihwkit_contender(model, x, y):
    from aihwkit.inference import PCMLikeNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import TorchInferenceRPUConfig, WeightModifierType

    config = TorchInferenceRPUConfig()
    config.forward.inp_res = 1 / (2 ** BITS - 2)
    config.forward.out_res = 1 / (2 ** BITS - 2)
    config.forward.out_noise = 0.02
    config.modifier.type = WeightModifierType.ADD_NORMAL  # weight noise in every training forward
    config.modifier.std_dev = 0.02
    config.noise_model = PCMLikeNoiseModel(g_max=25.0)
    # The Conv1D projections become linear layers first, so that they convert.
    model = _replace_modules(_untie_head(model), lambda module: module)
    return torch_contender(convert_to_analog(model, config), x, y)


PEERS = {
    "torchonn MZI phase": lambda model, x, y: torchonn_contender(model, x, y, "phase"),
    "torchonn MZI usv": lambda model, x, y: torchonn_contender(model, x, y, "usv"),
    "aihwkit": aihwkit_contender,
}


# ---------------------------------------------------------------------------


def measure(name: str, build, repeats: int, console: Console) -> dict:
    torch_model, x, y = build()
    state = {k: v.clone() for k, v in torch_model.state_dict().items()}
    contenders = {"torch": torch_contender(torch_model, x, y)}
    for mode in MODES:
        torch_model.load_state_dict(state)
        contenders[f"lumijax {mode}"] = lumijax_contender(torch_model.eval(), x, y, mode)
    for peer, make in PEERS.items():
        fresh = build()[0]
        fresh.load_state_dict(state)
        try:
            contenders[peer] = make(fresh, x, y)
            for run in contenders[peer]:
                run()
        except Exception as err:  # a peer that cannot run this network is reported, not dropped
            contenders[peer] = err
    runnable = {k: v for k, v in contenders.items() if not isinstance(v, Exception)}
    console.print(f"{name}: timing {', '.join(runnable)}")
    # Interleaved rounds, one sample of each contender a round, so that a
    # slow spell of the machine touches every contender alike.
    samples = {kind: {k: [] for k in runnable} for kind in ("step", "forward")}
    for _ in range(repeats):
        for kind, index in (("step", 0), ("forward", 1)):
            for contender, seconds in compare({k: v[index] for k, v in runnable.items()}, repeats=1, warmup=1).items():
                samples[kind][contender].append(seconds)
    steps = {k: statistics.median(v) for k, v in samples["step"].items()}
    forwards = {k: statistics.median(v) for k, v in samples["forward"].items()}
    rows = {}
    for contender, value in contenders.items():
        if isinstance(value, Exception):
            rows[contender] = {"error": f"{type(value).__name__}: {value}"}
            continue
        rows[contender] = {"step_ms": 1e3 * steps[contender], "forward_ms": 1e3 * forwards[contender],
                           "step_ratio_to_torch": steps[contender] / steps["torch"],
                           "forward_ratio_to_torch": forwards[contender] / forwards["torch"]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per contender (median)")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args()
    console = Console()
    retained = hostmem.retain_freed_memory()
    threads = torch.get_num_threads()
    results = {}
    for name in args.networks:
        results[name] = measure(name, NETWORKS[name], args.repeats, console)
        console.print(results[name])
    table = Table(title=f"training step and forward, ms (ratio to the torch float step), {threads} torch threads")
    for column in ("network", "contender", "step ms", "step / torch", "forward ms", "forward / torch"):
        table.add_column(column, justify="left" if column in ("network", "contender") else "right")
    for name, rows in results.items():
        for contender, row in rows.items():
            if "error" in row:
                table.add_row(name, contender, "—", "—", "—", row["error"][:60])
                continue
            table.add_row(name, contender, f"{row['step_ms']:.1f}", f"{row['step_ratio_to_torch']:.2f}×",
                          f"{row['forward_ms']:.1f}", f"{row['forward_ratio_to_torch']:.2f}×")
    console.print(table)
    path = write("training", {"machine": machine(), "torch_threads": threads, "hardware": HARDWARE.to_dict(),
                              "host_memory_retained": retained,
                              "weight_bits": BITS, "learning_rate": LEARNING_RATE,
                              "time": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results})
    console.print(f"results in {path}")


if __name__ == "__main__":
    main()
