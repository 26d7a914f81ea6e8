"""WDMPlanner: allocation, spacing compression and the WDM map."""

import dataclasses
import itertools
import json

import numpy as np
import pytest

from lumijax import hardware as hw
from lumijax import wdm

CONFIG = hw.HardwareConfig(num_channels=8, fsr_nm=12.0, quality_factor=1e4, crosstalk_suppression_db=10.0)
RNG = np.random.default_rng(5)


def skewed(n):
    power = np.full(n, 0.05)
    power[::4] = 1.0  # strong inputs next to each other in natural order
    power[1::4] = 0.9
    return power


def test_permutations_are_valid_and_tiles_cover_every_input_once():
    ops = [wdm.PhotonicOp("a", RNG.uniform(0, 1, 21), 5), wdm.PhotonicOp("b", skewed(8), 6)]
    plan = wdm.WDMPlanner(CONFIG).optimize_allocation(ops)
    for op, alloc in zip(ops, plan.ops):
        assert sorted(alloc.permutation) == list(range(op.fan_in))
        assert all(len(t) <= CONFIG.num_channels for t in alloc.tiles)
        assert len(alloc.tiles) == -(-op.fan_in // CONFIG.num_channels)


def test_optimised_cost_never_above_sequential_and_lower_on_skew():
    coupling = np.asarray(hw.crosstalk_matrix(CONFIG.replace(channel_spacing_nm=0.3)), np.float64)
    for _ in range(10):
        power = RNG.exponential(size=8)
        slots = wdm.assign_slots(power, coupling)
        assert sorted(slots) == list(range(8))
        assert wdm.crosstalk_cost(power, slots, coupling) <= wdm.crosstalk_cost(power, range(8), coupling) + 1e-12
    power = skewed(8)
    slots = wdm.assign_slots(power, coupling)
    assert wdm.crosstalk_cost(power, slots, coupling) < 0.8 * wdm.crosstalk_cost(power, range(8), coupling)


def test_small_tiles_reach_the_exhaustive_optimum():
    coupling = np.asarray(hw.crosstalk_matrix(CONFIG.replace(channel_spacing_nm=0.25)), np.float64)
    power = np.array([1.0, 0.9, 0.1, 0.05, 0.8])
    best = min(wdm.crosstalk_cost(power, p, coupling) for p in itertools.permutations(range(5)))
    assert wdm.crosstalk_cost(power, wdm.assign_slots(power, coupling), coupling) == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
def test_compressed_spacing_meets_the_snr_and_is_minimal(bits):
    planner = wdm.WDMPlanner(CONFIG, tolerance_nm=1e-3)
    spacing = planner.compress_spacing("op", bits)
    need = 6.02 * bits + 1.76
    assert float(hw.snr_db(CONFIG.replace(channel_spacing_nm=spacing))) >= need
    if spacing > planner.min_spacing_nm:
        assert float(hw.snr_db(CONFIG.replace(channel_spacing_nm=spacing - 1e-3))) < need
    assert CONFIG.num_channels * spacing <= CONFIG.fsr_nm


def test_infeasible_requests_name_the_op_and_the_numbers():
    with pytest.raises(ValueError, match=r"op 'deep': 8 bits need an SNR of 49\.9 dB"):
        wdm.WDMPlanner(CONFIG).optimize_allocation([wdm.PhotonicOp("deep", np.ones(8), 8)])
    with pytest.raises(ValueError, match=r"op 'wide': 8 channels at the minimum spacing 2\.0 nm"):
        wdm.WDMPlanner(CONFIG, min_spacing_nm=2.0).optimize_allocation([wdm.PhotonicOp("wide", np.ones(8), 4)])
    with pytest.raises(ValueError, match="channel_power"):
        wdm.WDMPlanner(CONFIG).optimize_allocation([wdm.PhotonicOp("nan", np.array([1.0, np.nan]), 4)])


def test_map_round_trips_through_dict_and_json(tmp_path):
    plan = wdm.WDMPlanner(CONFIG).optimize_allocation([wdm.PhotonicOp("a", RNG.uniform(0, 1, 13), 5)])
    data = json.loads(json.dumps(plan.to_dict()))
    assert wdm.WDMMap.from_dict(data) == plan
    path = plan.plot_spectra("a", tmp_path / "a.png")
    assert path.stat().st_size > 10_000
    assert plan.table().row_count == 1


def test_planning_a_photonic_model_and_applying_the_plan():
    from flax import nnx

    from lumijax import layers

    class Net(nnx.Module):
        def __init__(self, rngs):
            core = lambda: layers.PhotonicCore(hardware=CONFIG, compensate=False, input_bits=16, output_bits=16, rngs=rngs)
            self.first = layers.OpticalLinear(12, 6, weight_bits=5, core=core(), rngs=rngs)
            self.second = layers.OpticalLinear(6, 3, weight_bits=6, core=core(), rngs=rngs)

        def __call__(self, x):
            return self.second(self.first(x))

    net = Net(nnx.Rngs(0))
    # skew the input energy so that the order matters
    net.first.kernel[...] = net.first.kernel[...] * np.array([3, 3, 3, 0.1, 0.1, 0.1, 3, 3, 0.1, 0.1, 0.1, 0.1])[:, None]
    ops = wdm.photonic_ops(net)
    assert [op.name for op in ops] == ["first", "second"] and [op.bits for op in ops] == [5, 6]
    energy = np.sum(np.asarray(net.first.kernel[...]) ** 2, axis=1)
    np.testing.assert_allclose(ops[0].channel_power, energy / energy.max(), rtol=1e-5)
    plan = wdm.WDMPlanner(CONFIG).optimize_allocation(net)
    assert plan.ops[0].crosstalk_cost < plan.ops[0].sequential_cost

    x = np.asarray(RNG.standard_normal((4, 12)), np.float32)
    before = np.asarray(net(x))
    plan.apply(net)
    assert net.first.slot_order == tuple(plan.ops[0].permutation)
    assert float(net.first.core.channel_spacing_nm[...]) == pytest.approx(plan.ops[0].spacing_nm)
    after = np.asarray(net(x))
    assert not np.allclose(before, after)  # the plan changes what the hardware computes
    # and what it computes is the product with the crosstalk of the planned slots
    order = np.array(plan.ops[0].permutation)
    w = np.asarray(net.first.quantized(net.first.weight_matrix()))[:, order]  # the 5-bit weights it holds
    coupled = np.asarray(hw.effective_weights(w, CONFIG.replace(channel_spacing_nm=plan.ops[0].spacing_nm)))
    hidden = x[:, order] @ coupled.T + np.asarray(net.first.bias[...])
    np.testing.assert_allclose(np.asarray(net.first(x)), hidden, atol=3e-3 * np.abs(hidden).max())
    with pytest.raises(KeyError, match="ghost"):
        wdm.WDMMap(CONFIG, [dataclasses.replace(plan.ops[0], name="ghost")]).apply(net)


SMALL = {"resnet18": dict(num_classes=10), "gpt2": dict(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)}


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_planning_converted_models(arch):
    from lumijax import convert

    model = convert.recipe(arch, weight_bits=6, **SMALL[arch])
    plan = wdm.WDMPlanner(hw.HardwareConfig(crosstalk_suppression_db=20.0)).optimize_allocation(model)
    names = {op.name for op in plan.ops}
    assert ("conv1" in names and "fc" in names) if arch == "resnet18" else ("lm_head" in names and "transformer.h.1.mlp.c_fc" in names)
    assert len(plan.ops) == convert.summarize(model).weighted_layers
    assert all(op.crosstalk_cost <= op.sequential_cost for op in plan.ops)
