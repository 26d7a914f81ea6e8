"""HardwareConfig: validation, pytree behaviour, tracing."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumijax import hardware as hw
from lumijax.hardware import HardwareConfig

INVALID = [
    ("quality_factor", 0.0),
    ("quality_factor", -1e4),
    ("channel_spacing_nm", 0.0),
    ("channel_spacing_nm", -0.4),
    ("wavelength_nm", 0.0),
    ("fsr_nm", -1.0),
    ("responsivity_A_per_W", 0.0),
    ("laser_power_mW", -1.0),
    ("bandwidth_GHz", 0.0),
    ("load_resistance_ohm", 0.0),
    ("temperature_K", 0.0),
    ("rin_db_per_hz", 3.0),
    ("thermal_coupling", 1.0),
    ("thermal_coupling", -0.1),
    ("crosstalk_suppression_db", -3.0),
    ("thermo_optic_nm_per_K", math.inf),
    ("dac_bits", 0),
    ("dac_bits", 17),
    ("adc_bits", 1),
    ("adc_bits", 32),
    ("num_channels", 0),
    ("dac_bits", 8.0),
]


@pytest.mark.parametrize("field,value", INVALID)
def test_invalid_field_raises_naming_it(field, value):
    with pytest.raises(ValueError, match=rf"HardwareConfig\.{field}\b") as info:
        HardwareConfig(**{field: value})
    message = str(info.value)
    assert "allowed" in message or "integer" in message


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(HardwareConfig) if f.name not in hw._INT_RANGES]
)
def test_nan_anywhere_raises(field):
    with pytest.raises(ValueError, match=rf"HardwareConfig\.{field} = nan"):
        HardwareConfig(**{field: float("nan")})


def test_channels_must_fit_one_fsr():
    HardwareConfig(num_channels=25, channel_spacing_nm=0.8, fsr_nm=20.0)  # exactly fits
    with pytest.raises(ValueError, match=r"num_channels·channel_spacing_nm.*20\.8 nm exceeds fsr_nm = 20"):
        HardwareConfig(num_channels=26, channel_spacing_nm=0.8, fsr_nm=20.0)


def test_replace_validates():
    config = HardwareConfig()
    assert config.replace(channel_spacing_nm=0.4).channel_spacing_nm == 0.4
    with pytest.raises(ValueError, match="channel_spacing_nm"):
        config.replace(channel_spacing_nm=-1.0)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HardwareConfig().quality_factor = 5.0


def test_pytree_leaves_are_the_float_fields():
    config = HardwareConfig(num_channels=8, dac_bits=6)
    leaves, treedef = jax.tree_util.tree_flatten(config)
    assert len(leaves) == len(dataclasses.fields(HardwareConfig)) - 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt == config
    doubled = jax.tree.map(lambda v: 2 * v, config)
    assert doubled.quality_factor == 2e4 and doubled.num_channels == 8 and doubled.dac_bits == 6


def test_traced_fields_pass_through_jit_and_vmap(bank):
    spacings = jnp.array([0.4, 0.8, 1.2])
    expected = [
        float(hw.adjacent_crosstalk_db(bank.replace(channel_spacing_nm=float(s)))) for s in spacings
    ]
    # A spacing traced inside the function ...
    by_replace = jax.jit(
        jax.vmap(lambda s: hw.adjacent_crosstalk_db(bank.replace(channel_spacing_nm=s)))
    )
    np.testing.assert_allclose(by_replace(spacings), expected, rtol=1e-6)
    # ... and a config that carries a batch of spacings, mapped over that field only.
    axes = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(bank),
        [0 if name == "channel_spacing_nm" else None for name in hw._LEAF_FIELDS],
    )
    stacked = bank.replace(channel_spacing_nm=spacings)
    by_config = jax.jit(jax.vmap(hw.adjacent_crosstalk_db, in_axes=(axes,)))
    np.testing.assert_allclose(by_config(stacked), expected, rtol=1e-6)
