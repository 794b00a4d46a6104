"""SamplerConfig's entry points name the valid fields and the closest match (issue 18, item 7)."""

import pytest

import slt_jax as sj

BASE = dict(step_size=1e-4, localization=1.0, num_draws=10, batch_size=8)


def test_unknown_field_in_the_constructor_names_the_closest_field():
    with pytest.raises(TypeError, match=r"'localisation' \(did you mean 'localization'\?\); valid: step_size"):
        sj.SamplerConfig(**{**BASE, "localisation": 1.0})


def test_from_dict_and_replace_name_the_closest_field():
    with pytest.raises(TypeError, match=r"'num_chain' \(did you mean 'num_chains'\?\)"):
        sj.SamplerConfig.from_dict({**BASE, "num_chain": 4})
    with pytest.raises(TypeError, match=r"'num_draw' \(did you mean 'num_draws'\?\)"):
        sj.SamplerConfig(**BASE).replace(num_draw=3)
    with pytest.raises(TypeError, match="values must be a dict"):
        sj.SamplerConfig.from_dict([("step_size", 1e-4)])


def test_missing_and_positional_arguments_get_an_example():
    with pytest.raises(TypeError, match="SamplerConfig needs localization, num_draws, batch_size; e.g."):
        sj.SamplerConfig(step_size=1e-4)
    with pytest.raises(TypeError, match="keyword arguments only"):
        sj.SamplerConfig(1e-4, 1.0, 10, 8)


def test_the_signature_stays_visible_and_round_trips():
    import inspect

    assert list(inspect.signature(sj.SamplerConfig).parameters)[:4] == ["step_size", "localization", "num_draws", "batch_size"]
    config = sj.SamplerConfig(**BASE, num_chains=2)
    assert sj.SamplerConfig.from_dict(config.to_dict()) == config
