"""The generic ``torch.export`` path on the ops real models use: each small
module converted and compared with torch (outputs and input gradients), and
the conversion bugs real models ran into."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from common import relative_error  # noqa: E402

from lumijax import convert, hardware as hw, layers  # noqa: E402

PARITY = 1e-4
F = torch.nn.functional
pytestmark = pytest.mark.usefixtures("highest_precision")


class Apply(torch.nn.Module):
    """A function as a module."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def assert_matches_torch(module: torch.nn.Module, x: torch.Tensor, tolerance: float = PARITY) -> None:
    """Outputs and the input gradient of a random probe, against torch."""
    module.eval()
    x_torch = x.clone().requires_grad_(x.is_floating_point())
    reference = module(x_torch)
    program = convert.from_torch(module, (x,))
    ours = program(x.numpy())
    assert np.shape(ours) == tuple(reference.shape)
    assert relative_error(ours, reference.detach().numpy()) <= tolerance
    if x.is_floating_point():
        probe = np.random.default_rng(0).normal(size=tuple(reference.shape)).astype(np.float32)
        (reference * torch.from_numpy(probe)).sum().backward()
        grad = jax.grad(lambda v: jnp.sum(program(v) * probe))(jnp.asarray(x.numpy()))
        assert relative_error(grad, x_torch.grad.numpy()) <= tolerance


def images(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


ELEMENTWISE = {
    "cos-sin": lambda x: torch.cos(x) * torch.sin(2 * x),
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "minimum-maximum": lambda x: torch.minimum(x, x.flip(-1)) + torch.maximum(x, torch.zeros_like(x)),
    "full_like": lambda x: x + torch.full_like(x, 0.25),
    "unflatten-unbind": lambda x: sum(part * (i + 1) for i, part in enumerate(x.unflatten(-1, (2, 4)).unbind(-2))),
    "gather": lambda x: torch.gather(x, 1, torch.tensor([[7, 0, 3], [1, 1, 6], [2, 5, 4]])),
    "to-device": lambda x: x.to(x.device) * 2,
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_and_layout_ops(name):
    assert_matches_torch(torch.nn.Sequential(torch.nn.Linear(8, 8), Apply(ELEMENTWISE[name])), images((3, 8)))


KINKS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hardtanh": lambda x: F.hardtanh(x, -1.0, 1.0),
    "clamp": lambda x: torch.clamp(x, -1.0, 6.0),
    "clamp-min": lambda x: torch.clamp(x, min=0.0),
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
}


@pytest.mark.parametrize("name", list(KINKS))
def test_piecewise_activations_at_their_kinks(name):
    """Inputs exactly on the corners (0, ±1, ±3, 6), as a ReLU6 meets after
    an all-zero window: the gradient there is torch's (0 at a clamp's
    bound, hardswish's outer pieces at ±3)."""
    x = torch.tensor([[-4.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0, 7.0, float("nan")]])
    assert_matches_torch(Apply(KINKS[name]), x.nan_to_num(2.0))
    nan_in = convert.from_torch(Apply(KINKS[name]), (x,))(x.numpy())
    assert np.isnan(np.asarray(nan_in)[0, -1]) and np.isfinite(np.asarray(nan_in)[0, :-1]).all()


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("size, kernel, stride, padding", [(7, 3, 2, 0), (6, 3, 2, 1), (8, 2, 2, 0), (5, 3, 2, 1), (9, 2, 3, 0)])
def test_pooling_with_ceil_mode(size, kernel, stride, padding, ceil_mode):
    """``ceil_mode`` windows overhang the bottom/right edge; a window that
    would start in the right padding is dropped; the average counts the
    padding (or not) but never the overhang."""
    x = images((2, 4, size, size))
    for pool in (
        lambda v: F.max_pool2d(v, kernel, stride, padding, ceil_mode=ceil_mode),
        lambda v: F.avg_pool2d(v, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=True),
        lambda v: F.avg_pool2d(v, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=False),
    ):
        assert_matches_torch(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), Apply(pool)), x)


@pytest.mark.parametrize("norm", [
    torch.nn.GroupNorm(2, 6, eps=1e-3),
    torch.nn.GroupNorm(6, 6, affine=False),
    torch.nn.InstanceNorm2d(6, affine=True),
    torch.nn.InstanceNorm2d(6, eps=1e-2),
])
def test_group_and_instance_norm(norm):
    torch.manual_seed(0)
    if getattr(norm, "weight", None) is not None:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    assert_matches_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), norm), 3 + images((2, 3, 5, 5)))


@pytest.mark.parametrize("upsample", [
    torch.nn.Upsample(scale_factor=2, mode="nearest"),
    torch.nn.Upsample(size=(7, 5), mode="nearest"),
    torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
    torch.nn.Upsample(scale_factor=1.5, mode="bilinear", align_corners=False),
    torch.nn.Upsample(size=(7, 9), mode="bilinear", align_corners=True),
    torch.nn.Upsample(size=(3, 2), mode="bilinear", align_corners=False),
])
def test_upsampling(upsample):
    assert_matches_torch(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), upsample), images((2, 3, 4, 5)))


def test_in_place_dropout():
    """``Dropout(inplace=True)`` in eval mode writes nothing, also after a
    flatten (a view)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(), torch.nn.Dropout(0.3, inplace=True),
                                torch.nn.Linear(12, 5), torch.nn.Dropout(0.2, inplace=True))
    assert_matches_torch(model, images((2, 2, 4, 4)))


def test_module_names_that_are_not_identifiers():
    model = torch.nn.Sequential()
    model.add_module("block1-0", torch.nn.Linear(4, 3))
    model.add_module("act", torch.nn.ReLU())
    model.add_module("2 head", torch.nn.Linear(3, 2))
    assert_matches_torch(model, images((2, 4)))
    program = convert.from_torch(model, (images((2, 4)),))
    assert sorted(program.spec.modules) == ["_2_head", "block1_0"]


@pytest.mark.parametrize("mode", ["expected", "noisy"])
def test_zero_weight_row_stays_finite(mode):
    """A pruned unit (one all-zero weight row) gives its bias, and the other
    outputs stay what they are in ideal mode up to the hardware's error."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight[3] = 0.0
    x = images((16, 32))
    ideal = np.asarray(convert.from_torch(linear, (x,))(x.numpy()))
    ours = np.asarray(convert.from_torch(linear, (x,), hw.HardwareConfig(), mode)(x.numpy()))
    assert np.isfinite(ours).all()
    assert relative_error(ours, ideal) < 0.25
    if mode == "expected":
        np.testing.assert_allclose(ours[:, 3], ideal[:, 3], atol=0.1 * np.abs(ideal).max())


def test_arguments_the_table_cannot_honour_fail_at_conversion():
    """A training-mode dropout is refused by ``from_torch``, not at the
    first call, naming op, node and module."""

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return F.dropout(self.proj(x), 0.5, training=True)

    with pytest.raises(convert.ConversionError, match=r"aten.dropout.default at node 'dropout' in <root> \(Noisy\): dropout in training mode"):
        convert.from_torch(Noisy(), (images((2, 4)),))


def test_hf_decoder_with_default_cache_setting():
    """A Hugging Face decoder left at ``use_cache=True`` is captured with the
    cache off, and the summary says so."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=29, n_positions=12, n_embd=16, n_layer=1, n_head=2)
    assert config.use_cache
    module = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 29, (2, 7), generator=torch.Generator().manual_seed(1))
    program = convert.from_torch(module, (ids,))
    assert relative_error(program(ids.numpy()), module(ids, use_cache=False).logits.detach().numpy()) <= PARITY
    assert any("use_cache=False" in note for note in convert.summarize(program).notes)


@pytest.mark.parametrize("name", ["llama", "t5-encoder", "bert", "transformer_encoder_layer", "minilm-l6 (pretrained)"])
def test_real_architectures_match_torch(name):
    """A handful of the coverage zoo (``benchmarks/coverage_zoo.py``; the
    benchmark runs all of it): rotary embeddings (Llama), relative position
    buckets (T5), an attention mask built from comparisons (BERT),
    ``nn.MultiheadAttention``'s unflatten/unbind, and the pretrained
    all-MiniLM-L6-v2."""
    from coverage_zoo import ZOO
    from flax import nnx

    case = ZOO[name]()
    arrays = [t.numpy() for t in (*case.inputs, *case.kwargs.values())]
    with torch.no_grad():
        reference = torch.utils._pytree.tree_leaves(case.module(*case.inputs, **case.kwargs))[0].numpy()
    program = convert.from_torch(case.module, case.inputs, example_kwargs=case.kwargs)
    assert relative_error(jax.tree_util.tree_leaves(program(*arrays))[0], reference) <= PARITY
    first = lambda model: np.asarray(jax.tree_util.tree_leaves(model(*arrays))[0], np.float64)  # noqa: E731
    out = first(layers.set_mode(nnx.clone(program), "noisy"))  # the default 8-bit hardware
    assert np.isfinite(out).all()
    if name != "minilm-l6 (pretrained)":  # its outlier features set full scales far above typical signals
        assert relative_error(out, reference) < 0.2
    # the noise itself, above 8-bit code flips: 12-bit converters calibrated on the batch
    for core in layers.photonic_cores(program):
        core.input_bits = core.output_bits = 12
    layers.set_mode(program, "expected")(*arrays, observe=True)
    expected = first(program)
    noisy = layers.set_mode(program, "noisy")
    noise = np.sqrt(np.mean((first(noisy) - expected) ** 2))
    for core in layers.photonic_cores(noisy):  # a 100× narrower detector band: every noise power falls 100×
        core.hardware = core.hardware.replace(bandwidth_GHz=core.hardware.bandwidth_GHz / 100)
    assert 0 < np.sqrt(np.mean((first(noisy) - expected) ** 2)) < 0.5 * noise


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(6, 6, 3, padding=1, groups=6),  # depthwise
    torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False),
    torch.nn.Conv2d(6, 6, (1, 3), padding=(0, 1), groups=3),
    torch.nn.Conv2d(6, 4, 3, padding=2, dilation=2),  # atrous
    torch.nn.Conv2d(6, 6, 3, stride=2, padding=(2, 1), dilation=(2, 1), groups=6),
])
def test_grouped_and_dilated_convolutions_match_torch(conv):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, conv.in_channels, 1), conv, torch.nn.ReLU())
    assert_matches_torch(model, images((2, 3, 7, 7)))


@pytest.mark.parametrize("compensate", [False, True])
def test_grouped_convolution_groups_are_banks_of_their_own(compensate):
    """On the hardware each group multiplies its own channels' patches by
    its own bank: with 16-bit converters the layer equals one
    ``photonic_matmul`` per group (crosstalk and compensation inside each
    group's tiles only)."""
    from flax import nnx

    from lumijax import conv as conv_lowering

    config = hw.HardwareConfig(num_channels=4, channel_spacing_nm=0.2)
    core = layers.PhotonicCore(config, mode="expected", input_bits=16, output_bits=16, compensate=compensate, rngs=nnx.Rngs(0))
    layer = layers.OpticalConv(4, 6, 3, padding=((1, 1), (1, 1)), groups=2, weight_bits=16, core=core, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 5, 5, 4))
    ours = layer(x) - layer.conv.bias[...]
    weights = layer.quantized(layer.weight_matrix())
    geometry = conv_lowering.Conv2D(3, 1, ((1, 1), (1, 1)))
    full_scale = jnp.max(jnp.abs(x))
    reference = jnp.concatenate([
        hw.photonic_matmul(geometry.patches(x[..., 2 * g: 2 * g + 2]), weights[3 * g: 3 * g + 3], config, compensate=compensate,
                           input_full_scale=full_scale)
        for g in range(2)
    ], axis=-1)
    assert relative_error(ours, reference) <= 1e-3
    ideal = layers.set_mode(nnx.clone(layer), "ideal")(x) - layer.conv.bias[...]
    if not compensate:
        assert relative_error(ours, ideal) > 1e-2  # the crosstalk is there


@pytest.mark.parametrize("conv", [
    torch.nn.Conv1d(3, 5, 3, padding=1),
    torch.nn.Conv1d(3, 4, 5, stride=2, padding=2, bias=False),
    torch.nn.Conv1d(3, 6, 3, groups=3),
])
def test_conv1d_matches_torch(conv):
    """An audio-style front end: ``conv1d`` as a one-row 2-D convolution."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    x = images((2, 3, 11))
    model(x)  # materialise the lazy layer
    assert_matches_torch(model, x)
    noisy = convert.from_torch(model, (x,), hw.HardwareConfig(), "noisy")
    assert np.isfinite(np.asarray(noisy(x.numpy()))).all()


@pytest.mark.parametrize("groups", [1, 2])
def test_dilated_convolution_on_the_core(groups):
    """A dilated kernel's taps read pixels ``dilation`` apart: on the
    hardware, with 16-bit converters and compensated crosstalk, the layer is
    torch's dilated convolution up to the converters' rounding."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, padding=3, dilation=3, groups=groups))
    x = images((2, 4, 9, 9))
    reference = model(x).detach().numpy()
    config = hw.HardwareConfig(num_channels=4, channel_spacing_nm=0.2, dac_bits=16, adc_bits=16)
    program = convert.from_torch(model, (x,), config, "expected", weight_bits=16)
    assert relative_error(program(x.numpy()), reference) <= 1e-3


@pytest.mark.parametrize("deconv", [
    torch.nn.ConvTranspose2d(4, 3, 2, stride=2),  # U-Net up-sampling
    torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, bias=False),
    torch.nn.ConvTranspose2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), groups=2),
    torch.nn.ConvTranspose1d(4, 2, 4, stride=2, padding=1),
])
def test_transposed_convolutions_match_torch(deconv):
    torch.manual_seed(0)
    model = torch.nn.Sequential(deconv, torch.nn.Tanh())
    x = images((2, 4, 5, 5) if isinstance(deconv, torch.nn.ConvTranspose2d) else (2, 4, 7))
    assert_matches_torch(model, x)


def test_transposed_convolution_is_one_product_per_pixel_on_the_core():
    """On the hardware each input pixel's channels meet one bank of
    ``kh·kw·C_out`` rows (no inserted zeros): with 16-bit converters the
    layer equals ``photonic_matmul`` of the pixels, overlap-added; and the
    summary counts torch's multiply-adds, not those of a zero-stuffed
    input."""
    from flax import nnx

    config = hw.HardwareConfig(num_channels=4, channel_spacing_nm=0.2)
    core = layers.PhotonicCore(config, mode="expected", input_bits=16, output_bits=16, compensate=False, rngs=nnx.Rngs(0))
    layer = layers.OpticalConvTranspose(4, 3, 3, 2, padding=1, weight_bits=16, use_bias=False, core=core, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 5, 5, 4))
    taps = hw.photonic_matmul(x.reshape(-1, 4), layer.quantized(layer.weight_matrix()), config, compensate=False,
                              input_full_scale=jnp.max(jnp.abs(x)))
    reference = layer.geometry.overlap_add(taps.reshape(2, 5, 5, 3, 3, 3))
    ours = layer(x)
    assert ours.shape == (2, 9, 9, 3)
    assert relative_error(ours, reference) <= 1e-3
    assert relative_error(ours, layers.set_mode(nnx.clone(layer), "ideal")(x)) > 1e-2  # the crosstalk is there

    model = torch.nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, bias=False)
    summary = convert.summarize(convert.from_torch(model, (images((2, 4, 5, 5)),)))
    assert summary.photonic_flops == 2 * 2 * 5 * 5 * 4 * 3 * 9


class Sequence(torch.nn.Module):
    """A recurrent layer's outputs and final hidden state, side by side."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *state):
        y, final = self.rnn(x, *state)
        h = final[0] if isinstance(final, tuple) else final
        return torch.cat([y.reshape(-1), h.reshape(-1)])


@pytest.mark.parametrize("rnn,shape", [
    (torch.nn.LSTM(4, 6, num_layers=2, batch_first=True), (2, 5, 4)),
    (torch.nn.LSTM(4, 5, bidirectional=True, bias=False), (5, 2, 4)),
    (torch.nn.GRU(4, 6, num_layers=2, bidirectional=True), (5, 2, 4)),
    (torch.nn.GRU(3, 4, batch_first=True), (3, 6, 3)),
], ids=["lstm-2-layers", "lstm-bidirectional-no-bias", "gru-2-layers-bidirectional", "gru"])
def test_recurrent_layers_match_torch(rnn, shape):
    """Gate order (LSTM i, f, g, o; GRU r, z, n with ``b_hn`` inside the
    reset product), both biases, directions and stacking as torch."""
    torch.manual_seed(0)
    assert_matches_torch(Sequence(rnn), images(shape))


def test_recurrent_layers_take_an_initial_state_and_run_their_gates_on_the_core():
    torch.manual_seed(0)
    lstm = Sequence(torch.nn.LSTM(3, 4, bidirectional=True)).eval()
    x, h0, c0 = images((6, 2, 3)), images((2, 2, 4), 1), images((2, 2, 4), 2)
    reference = lstm(x, (h0, c0)).detach().numpy()
    program = convert.from_torch(lstm, (x, (h0, c0)))
    assert relative_error(program(x.numpy(), h0.numpy(), c0.numpy()), reference) <= PARITY
    summary = convert.summarize(program)
    assert summary.weighted_layers == 4  # W_ih and W_hh of each direction
    gates = 4 * 4
    assert summary.photonic_flops == 2 * (2 * 6 * 2 * (3 * gates + 4 * gates))  # 2 directions × T·N·(I + H)·4H MACs

    config = hw.HardwareConfig(dac_bits=16, adc_bits=16)
    exact = convert.from_torch(lstm, (x, (h0, c0)), config, "expected", weight_bits=16)
    assert relative_error(exact(x.numpy(), h0.numpy(), c0.numpy()), reference) <= 1e-3
    noisy = convert.from_torch(lstm, (x, (h0, c0)), hw.HardwareConfig(), "noisy", weight_bits=4)
    out = noisy(x.numpy(), h0.numpy(), c0.numpy())
    assert np.isfinite(np.asarray(out)).all() and 1e-3 < relative_error(out, reference) < 0.5


def test_recurrent_layers_that_do_not_map_are_refused():
    lstm = Sequence(torch.nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(convert.ConversionError, match="proj_size"):
        convert.from_torch(lstm, (images((5, 2, 3)),))

    from flax import nnx

    from lumijax import recurrent

    rnn = recurrent.OpticalRNN("lstm", 3, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\(T, N, features\)"):
        rnn(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="2 initial state"):
        rnn(jnp.ones((5, 2, 3)), (jnp.zeros((1, 2, 4)),))
    with pytest.raises(ValueError, match="cell"):
        recurrent.OpticalRNN("rnn_tanh", 3, 4, rngs=nnx.Rngs(0))


def test_embedding_padding_row_gets_no_gradient():
    """``nn.Embedding(padding_idx=…)`` (BERT, RoBERTa, DistilBERT): torch
    leaves the padding row's gradient zero; so does the program."""
    from flax import nnx

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Embedding(10, 4, padding_idx=0), torch.nn.Linear(4, 3))
    tokens = torch.tensor([[0, 3, 3, 5], [2, 0, 0, 9]])
    probe = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
    (module(tokens) * torch.from_numpy(probe)).sum().backward()
    program = convert.from_torch(module, (tokens,))
    grads = nnx.grad(lambda m: jnp.sum(m(tokens.numpy()) * probe))(program)
    table = program.torch_slots()["0.weight"].variable
    path = next(path for path, node in nnx.iter_graph(program) if node is table)
    grad = np.asarray(dict(nnx.to_flat_state(grads))[path].get_value())
    reference = module[0].weight.grad.numpy()
    assert not reference[0].any() and not grad[0].any()
    assert relative_error(grad, reference) <= PARITY
