"""torch → photonic NNX: parity with torch, checkpoints, saving, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")

from flax import nnx  # noqa: E402
from safetensors.torch import save_model  # noqa: E402
from common import relative_error  # noqa: E402
from torch_models import NanoGPT, NanoGPTConfig, randomize_batch_norms  # noqa: E402

from lumijax import cli, convert, layers  # noqa: E402

PARITY = 1e-4
GPT2_CONFIGS = [
    dict(vocab_size=61, n_positions=16, n_embd=32, n_layer=2, n_head=4),
    dict(vocab_size=37, n_positions=24, n_embd=48, n_layer=3, n_head=3, activation_function="gelu", n_inner=80,
         layer_norm_epsilon=1e-6, scale_attn_by_inverse_layer_idx=True),
]
pytestmark = pytest.mark.usefixtures("highest_precision")


def gpt2(config: dict, seed: int = 0):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**config, use_cache=False)).eval()


def tokens(vocab: int, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def nanogpt(bias: bool, seed: int = 0) -> NanoGPT:
    torch.manual_seed(seed)
    return NanoGPT(NanoGPTConfig(block_size=16, vocab_size=53, n_layer=2, n_head=2, n_embd=32, bias=bias)).eval()


def resnet(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_batch_norms(getattr(torchvision.models, arch)(num_classes=10, **kwargs), seed)


def cifar_resnet18() -> torch.nn.Module:
    """The common small-image variant: a 3×3 stride-1 stem and no max pool."""
    model = resnet("resnet18", seed=3)
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
    return model.eval()


def images(batch: int, size: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def logits_of(module, x):
    out = module(x)
    return (out.logits if hasattr(out, "logits") else out).detach().numpy()


# -- parity -------------------------------------------------------------------


def torch_cases():
    for i, config in enumerate(GPT2_CONFIGS):
        yield pytest.param(lambda c=config: gpt2(c), lambda c=config: tokens(c["vocab_size"], 2, c["n_positions"] - 3), id=f"gpt2-{i}")
    for bias in (True, False):
        yield pytest.param(lambda b=bias: nanogpt(b), lambda: tokens(53, 2, 11), id=f"nanogpt-bias{bias}")
    yield pytest.param(lambda: resnet("resnet18"), lambda: images(2, 32), id="resnet18")
    yield pytest.param(lambda: resnet("resnet50"), lambda: images(2, 32), id="resnet50")
    yield pytest.param(cifar_resnet18, lambda: images(2, 8), id="resnet18-cifar-stem")


@pytest.mark.parametrize("make_module, make_input", list(torch_cases()))
@pytest.mark.parametrize("path", ["recipe", "export"])
def test_ideal_outputs_match_torch(make_module, make_input, path):
    module, x = make_module(), make_input()
    reference = logits_of(module, x)
    if path == "recipe":
        model = convert.from_torch_recipe(module)
    else:
        model = convert.from_torch(module, (x,))
    ours = np.asarray(model(x.numpy()))
    assert ours.shape == reference.shape
    assert relative_error(ours, reference) <= PARITY


@pytest.mark.parametrize("path", ["recipe", "export"])
def test_resnet_input_gradient_matches_torch(path):
    module, x = resnet("resnet18", seed=5), images(2, 16)
    probe = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
    x_torch = x.clone().requires_grad_(True)
    (module(x_torch) * torch.from_numpy(probe)).sum().backward()
    model = convert.from_torch_recipe(module) if path == "recipe" else convert.from_torch(module, (x,))
    grad = jax.grad(lambda x: jnp.sum(model(x) * probe))(jnp.asarray(x.numpy()))
    assert relative_error(grad, x_torch.grad.numpy()) <= PARITY


@pytest.mark.parametrize("path", ["recipe", "export"])
def test_gpt2_embedding_gradient_matches_torch(path):
    """Token ids are discrete, so the input-side gradient is the gradient of
    the tied token embedding (it sums the embedding and the head parts)."""
    config = GPT2_CONFIGS[0]
    module, ids = gpt2(config), tokens(config["vocab_size"], 2, 9)
    probe = np.random.default_rng(1).normal(size=(2, 9, config["vocab_size"])).astype(np.float32)
    (module(ids).logits * torch.from_numpy(probe)).sum().backward()
    reference = module.transformer.wte.weight.grad.numpy()
    model = convert.from_torch_recipe(module) if path == "recipe" else convert.from_torch(module, (ids,))
    grads = dict(nnx.to_flat_state(nnx.grad(lambda m: jnp.sum(m(ids.numpy()) * probe))(model)))
    if path == "recipe":  # one shared table; NNX files it under the first path that reaches it
        (grad,) = [g[...] for p, g in grads.items() if p in (("transformer", "wte", "embedding"), ("lm_head", "embedding", "embedding"))]
    else:
        grad = grads[("lm_head", "kernel")][...].T  # the head layer holds the tied weight as its kernel (in, out)
    assert relative_error(grad, reference) <= PARITY


def test_recipe_tree_mirrors_torch_names():
    model = convert.from_torch_recipe(gpt2(GPT2_CONFIGS[0]))
    assert isinstance(model.transformer.h[1].attn.c_attn, layers.OpticalLinear)
    assert model.lm_head.embedding is model.transformer.wte  # tied, not copied
    program = convert.from_torch(gpt2(GPT2_CONFIGS[0]), (tokens(61, 1, 5),))
    assert {"lm_head", "transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= set(program.spec.modules)
    assert isinstance(getattr(program.transformer.h, "0").ln_1.weight, nnx.Param)


def test_non_ideal_modes_run_the_hardware():
    module, ids = nanogpt(bias=True, seed=1), tokens(53, 2, 11)
    reference = logits_of(module, ids)
    model = convert.from_torch_recipe(module, mode="expected", weight_bits=8)
    expected = np.asarray(model(ids.numpy()))
    assert 1e-4 < relative_error(expected, reference) < 0.2  # 8-bit weights and converters, crosstalk
    layers.set_mode(model, "noisy")
    first, second = np.asarray(model(ids.numpy())), np.asarray(model(ids.numpy()))
    assert not np.allclose(first, second)  # fresh noise on every call
    layers.set_mode(model, "ideal")
    assert relative_error(model(ids.numpy()), reference) <= PARITY


# -- checkpoints --------------------------------------------------------------


def test_checkpoint_round_trips(tmp_path):
    config = GPT2_CONFIGS[1]
    module, ids = gpt2(config), tokens(config["vocab_size"], 2, 7)
    save_model(module, str(tmp_path / "gpt2.safetensors"))  # drops the tied lm_head.weight, as save_pretrained does
    torch.save(module.state_dict(), tmp_path / "gpt2.pt")
    for name in ("gpt2.safetensors", "gpt2.pt"):
        model = convert.load_checkpoint(tmp_path / name, "gpt2", **config)
        assert relative_error(model(ids.numpy()), logits_of(module, ids)) <= PARITY

    cnn, x = resnet("resnet18", seed=4), images(1, 16)
    torch.save(cnn.state_dict(), tmp_path / "resnet.pth")
    model = convert.load_checkpoint(tmp_path / "resnet.pth", "resnet18", num_classes=10)
    assert relative_error(model(x.numpy()), logits_of(cnn, x)) <= PARITY


def test_nanogpt_training_checkpoint(tmp_path):
    """nanoGPT's train.py saves {"model": compiled state dict, "model_args"}."""
    module, ids = nanogpt(bias=False), tokens(53, 1, 16)
    state = {f"_orig_mod.{k}": v for k, v in module.state_dict().items()}
    args = dict(block_size=16, vocab_size=53, n_layer=2, n_head=2, n_embd=32, bias=False, dropout=0.0)
    torch.save({"model": state, "model_args": args, "iter_num": 10, "best_val_loss": 1.5}, tmp_path / "ckpt.pt")
    model = convert.load_checkpoint(tmp_path / "ckpt.pt", "nanogpt")
    assert relative_error(model(ids.numpy()), logits_of(module, ids)) <= PARITY


def test_pickled_module_is_refused(tmp_path):
    torch.save(resnet("resnet18"), tmp_path / "whole_model.pt")
    with pytest.raises(convert.CheckpointError, match=r"not a weights-only checkpoint.*torchvision\.models\.resnet\.ResNet"):
        convert.load_checkpoint(tmp_path / "whole_model.pt", "resnet18", num_classes=10)


def test_mismatched_checkpoint_names_every_problem(tmp_path):
    state = resnet("resnet18").state_dict()
    state["fc.weight"] = torch.zeros(10, 256)
    del state["layer2.0.bn1.running_var"]
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(convert.CheckpointError) as caught:
        convert.load_checkpoint(tmp_path / "bad.pt", "resnet18", num_classes=10)
    message = str(caught.value)
    assert "(3 problems)" in message
    assert "shape mismatch for fc.weight: checkpoint (10, 256), model (10, 512)" in message
    assert "missing key layer2.0.bn1.running_var" in message
    assert "unexpected key layer5.0.conv1.weight" in message


def test_bad_checkpoint_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(convert.CheckpointError, match="not a valid safetensors file"):
        convert.load_checkpoint(tmp_path / "junk.safetensors", "resnet18")
    (tmp_path / "junk.pt").write_bytes(b"not a zip archive")
    with pytest.raises(convert.CheckpointError, match="not a readable torch checkpoint|weights-only"):
        convert.load_checkpoint(tmp_path / "junk.pt", "resnet18")
    with pytest.raises(convert.CheckpointError, match="unknown checkpoint kind '.onnx'"):
        (tmp_path / "model.onnx").write_bytes(b"")
        convert.load_checkpoint(tmp_path / "model.onnx", "resnet18")
    state = resnet("resnet18").state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(convert.CheckpointError, match="conv1.weight holds NaN"):
        convert.load_checkpoint(tmp_path / "nan.pt", "resnet18", num_classes=10)
    with pytest.raises(ValueError, match="unknown architecture 'vgg16'"):
        convert.recipe("vgg16")


# -- the generic path's errors --------------------------------------------------


class Sorter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.sort(self.proj(x), dim=-1).values


class Wrapper(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = Sorter()

    def forward(self, x):
        return self.head(x)


def test_unsupported_op_names_itself():
    with pytest.raises(convert.ConversionError) as caught:
        convert.from_torch(Wrapper(), (torch.randn(2, 4),))
    message = str(caught.value)
    assert "aten.sort.default" in message and "node 'sort'" in message and "head (Sorter)" in message


def test_generic_products_and_in_place_ops():
    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(6, 5))
            self.v = torch.nn.Parameter(torch.randn(7, 2))

        def forward(self, a, b):
            h = a @ self.w  # a parameter weight: a ring bank
            h.relu_()  # in place: the add below sees the rectified value
            mixed = torch.bmm(h, b)  # two activations
            return h.sum() + mixed, torch.matmul(mixed, self.v.t())  # a transposed parameter: a bank too

    module = Mixer().eval()
    a, b = torch.randn(3, 4, 6), torch.randn(3, 5, 2)
    reference = module(a, b)
    program = convert.from_torch(module, (a, b))
    assert sorted(m["kind"] for m in program.spec.modules.values()) == ["core", "linear", "linear"]
    for ours, ref in zip(program(a.numpy(), b.numpy()), reference):
        assert relative_error(ours, ref.detach().numpy()) <= PARITY
    with pytest.raises(ValueError, match=r"input 'a': shape \(2, 4, 6\), but the program was exported for \(3, 4, 6\)"):
        program(a.numpy()[:2], b.numpy())


def test_summary_counts_products():
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    program = convert.from_torch(mlp, (torch.randn(2, 8),))
    summary = convert.summarize(program)
    assert summary.photonic_flops == 2 * 2 * (8 * 16 + 16 * 4)
    assert summary.parameters == 8 * 16 + 16 + 16 * 4 + 4
    assert summary.weighted_layers == 2 and summary.activation_cores == 0
    assert summary.photonic_flops < summary.total_flops < 2 * summary.photonic_flops


# -- saving -------------------------------------------------------------------


def test_save_and_load(tmp_path):
    module, x = resnet("resnet18", seed=6), images(1, 16)
    for model in (convert.from_torch_recipe(module, weight_bits=6), convert.from_torch(module, (x,), weight_bits=6)):
        model.fc.slot_order = tuple(reversed(range(512)))
        model.conv1.core.channel_spacing_nm[...] = 0.37
        path = convert.save(model, tmp_path / "model.msgpack")
        loaded = convert.load(path, mode="expected")
        assert type(loaded) is type(model) and loaded.fc.slot_order == model.fc.slot_order
        assert float(loaded.conv1.core.channel_spacing_nm[...]) == pytest.approx(0.37)
        layers.set_mode(model, "expected")
        np.testing.assert_array_equal(np.asarray(loaded(x.numpy())), np.asarray(model(x.numpy())))

    (tmp_path / "junk.msgpack").write_bytes(b"\xc1garbage")
    with pytest.raises(convert.ModelFileError, match="not a msgpack model file"):
        convert.load(tmp_path / "junk.msgpack")
    import msgpack

    (tmp_path / "other.msgpack").write_bytes(msgpack.packb({"format": "something.else"}))
    with pytest.raises(convert.ModelFileError, match="not a lumijax model file"):
        convert.load(tmp_path / "other.msgpack")


# -- CLI ----------------------------------------------------------------------


def test_cli_convert(tmp_path, capsys):
    torch.save(resnet("resnet18").state_dict(), tmp_path / "r.pt")
    out = tmp_path / "r.msgpack"
    assert cli.main(["convert", str(tmp_path / "r.pt"), "--arch", "resnet18", "--set", "num_classes=10", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "photonic share of FLOPs" in printed and "11,181,642" in printed
    assert isinstance(convert.load(out), convert.ResNet)
    assert cli.main(["convert", str(tmp_path / "r.pt"), "--arch", "resnet34", "--out", str(out)]) == 2
    assert "does not fit ResNet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["convert", str(tmp_path / "r.pt"), "--arch", "alexnet", "--out", str(out)])


# -- the pitfalls of known ports, op by op --------------------------------------


def aten_op(name: str):
    from lumijax.convert import aten

    return aten.OPS[name]


def test_layer_norm_epsilon_and_variance():
    """A tiny variance makes ε visible: torch's 1e-5 (not Flax's 1e-6) and
    the two-pass variance."""
    rng = np.random.default_rng(0)
    x = (1.0 + 3e-3 * rng.normal(size=(4, 16))).astype(np.float32)
    w, b = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    reference = torch.nn.functional.layer_norm(torch.from_numpy(x), (16,), torch.from_numpy(w), torch.from_numpy(b)).numpy()
    ours = aten_op("aten.layer_norm.default")(jnp.asarray(x), [16], jnp.asarray(w), jnp.asarray(b), 1e-5)
    assert relative_error(ours, reference) <= PARITY
    recipe = convert.recipe("gpt2", vocab_size=8, n_positions=4, n_embd=16, n_layer=1, n_head=2).transformer.ln_f
    recipe.scale[...], recipe.bias[...] = w, b
    assert relative_error(recipe(jnp.asarray(x)), reference) <= PARITY


def test_pooling_pads_like_torch():
    """Max pooling pads with −∞ (visible on negative inputs), average
    pooling counts or skips the padding as asked."""
    from lumijax.convert.resnet import max_pool_3x3_s2

    x = -1.0 - np.abs(np.random.default_rng(1).normal(size=(2, 3, 7, 7))).astype(np.float32)
    t = torch.from_numpy(x)
    reference = torch.nn.functional.max_pool2d(t, 3, 2, 1).numpy()
    np.testing.assert_array_equal(aten_op("aten.max_pool2d.default")(jnp.asarray(x), [3, 3], [2, 2], [1, 1]), reference)
    np.testing.assert_array_equal(np.transpose(max_pool_3x3_s2(jnp.asarray(x).transpose(0, 2, 3, 1)), (0, 3, 1, 2)), reference)
    for include in (True, False):
        reference = torch.nn.functional.avg_pool2d(t, 3, 2, 1, count_include_pad=include).numpy()
        ours = aten_op("aten.avg_pool2d.default")(jnp.asarray(x), [3, 3], [2, 2], [1, 1], False, include)
        assert relative_error(ours, reference) <= PARITY


def test_symmetric_conv_padding_on_even_inputs():
    """torch pads (1, 1) for a 3×3 stride-2 conv where Flax 'SAME' pads (0, 1)."""
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    x = torch.randn(1, 3, 8, 8)
    program = convert.from_torch(conv, (x,))
    assert relative_error(program(x.numpy()), conv(x).detach().numpy()) <= PARITY


def test_batch_norm_training_follows_torch():
    """In training mode the recipe normalises with the batch statistics and
    moves the running mean with torch's momentum 0.1 (Flax's 0.9); the
    running variance follows with the biased batch variance, torch's with
    the unbiased one (a factor n/(n−1)).

    Eight images: the last stage normalises its 1×1 maps over the batch, and
    over four examples that division is so ill-conditioned that torch's own
    float32 result lies 9e-5 from its float64 one."""
    module = resnet("resnet18", seed=7)
    x = images(8, 8)
    prior = module.bn1.running_var.clone().numpy()
    model = convert.from_torch_recipe(module)
    model.train()
    ours = np.asarray(model(x.numpy()))
    module.train()
    reference = module(x).detach().numpy()
    assert relative_error(ours, reference) <= PARITY
    np.testing.assert_allclose(np.asarray(model.bn1.mean[...]), module.bn1.running_mean.numpy(), rtol=1e-4, atol=1e-6)
    n = x.shape[0] * 4 * 4  # the stem (7×7, stride 2, padding 3) maps 8×8 to 4×4
    batch_var_ours = (np.asarray(model.bn1.var[...]) - 0.9 * prior) / 0.1
    batch_var_torch = (module.bn1.running_var.numpy() - 0.9 * prior) / 0.1
    np.testing.assert_allclose(batch_var_ours * n / (n - 1), batch_var_torch, rtol=1e-3)


def test_causal_mask_buffers_are_ignored(tmp_path):
    """Older GPT-2 state dicts carry the causal mask as buffers; the recipe
    rebuilds the mask and skips them."""
    config = GPT2_CONFIGS[0]
    module, ids = gpt2(config), tokens(config["vocab_size"], 1, 6)
    state = dict(module.state_dict())
    for i in range(config["n_layer"]):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(state, tmp_path / "old.pt")
    model = convert.load_checkpoint(tmp_path / "old.pt", "gpt2", **config)
    assert relative_error(model(ids.numpy()), logits_of(module, ids)) <= PARITY


def test_in_place_writes_through_views_are_refused():
    class Clamp(torch.nn.Module):
        def forward(self, x):
            x = x * 2
            x[:, 0].relu_()  # writes into x through a view
            return x

    with pytest.raises(convert.ConversionError, match="in-place write through a view"):
        convert.from_torch(Clamp(), (torch.randn(3, 4),))
