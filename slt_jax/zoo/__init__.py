"""Instruments: small models, synthetic tasks, an exact gridworld and closed-form answers.

``models`` (Flax NNX networks whose mechanism is known), ``tasks`` (synthetic data generated in
code), ``decoder`` and ``pretrained`` (GPT-2 and GPT-NeoX checkpoints read from local Hugging Face
folders, exposed as ``slt_jax.models.from_pretrained`` etc.), ``gridworld`` (an exact,
differentiable RL environment) and ``theory`` (closed-form LLCs and posterior moments the tests
check the estimators against). The sampler never imports them.
"""
