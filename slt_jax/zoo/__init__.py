"""Instruments: small models, synthetic tasks, an exact gridworld and closed-form answers.

``models`` (Flax NNX networks whose mechanism is known), ``tasks`` (synthetic data generated in
code), ``gridworld`` (an exact, differentiable RL environment) and ``theory`` (closed-form LLCs and
posterior moments the tests check the estimators against). The sampler never imports them.
"""
