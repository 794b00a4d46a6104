"""slt_jax.zoo.pretrained and slt_jax.zoo.decoder: public checkpoints read exactly, heads and MLPs as components.

The fixtures (tests/fixtures/pretrained/, written by scripts/make_pretrained_fixtures.py with torch and
transformers) hold small random GPT-2 and GPT-NeoX checkpoints with the logits of transformers' PyTorch
model in float32; these tests need neither torch nor transformers.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import slt_jax as sj

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
REFERENCES = ["gpt2_tied", "gpt2_untied", "gpt_neox_parallel", "gpt_neox_sequential", "gpt_neox_sharded"]
STORIES = FIXTURES / "tiny_stories"


@pytest.mark.parametrize("name", REFERENCES)
def test_logits_equal_the_reference_implementation(name):
    reference = load_file(str(FIXTURES / name / "reference.safetensors"))
    model = sj.models.from_pretrained(FIXTURES / name)
    logits = np.asarray(model(jnp.asarray(reference["input_ids"])))
    assert logits.shape == reference["logits"].shape
    np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=0)
    # the pure loss of from_nnx runs the same module: its per-token loss is the reference's
    params, loss_fn = sj.from_nnx(model, "next_token")
    losses = jax.jit(loss_fn)(params, {"inputs": jnp.asarray(reference["input_ids"])})
    expected = jax.nn.log_softmax(reference["logits"][:, :-1], axis=-1)
    expected = -np.take_along_axis(expected, reference["input_ids"][:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(losses), expected, atol=1e-4)


def test_configurations_cover_both_layouts():
    specs = {name: sj.models.from_pretrained(FIXTURES / name).spec for name in REFERENCES}
    assert specs["gpt2_tied"].tie_embeddings and not specs["gpt2_untied"].tie_embeddings
    assert specs["gpt_neox_parallel"].parallel_residual and not specs["gpt_neox_sequential"].parallel_residual
    assert 0 < specs["gpt_neox_parallel"].rotary_dims < specs["gpt_neox_parallel"].head_dim   # rotary_pct 0.25
    assert specs["gpt_neox_sharded"].rotary_dims == specs["gpt_neox_sharded"].head_dim         # rotary_pct 1
    assert not specs["gpt_neox_sharded"].attention_bias
    assert specs["gpt_neox_sequential"].rotary_base == 500.0      # read from the legacy rotary_emb_base key
    assert len(set(specs["gpt2_untied"].scales())) == 2           # scale_attn_by_inverse_layer_idx


def test_gpt_neox_head_is_its_interleaved_qkv_rows_and_its_output_columns():
    folder = FIXTURES / "gpt_neox_sequential"
    model = sj.models.from_pretrained(folder)
    params, _ = sj.from_nnx(model, "next_token")
    raw = load_file(str(folder / "model.safetensors"))
    d, heads, k = model.spec.width, model.spec.num_heads, model.spec.head_dim
    layer = 1
    fused = raw[f"gpt_neox.layers.{layer}.attention.query_key_value.weight"]     # (3d, d), (out, in)
    fused_bias = raw[f"gpt_neox.layers.{layer}.attention.query_key_value.bias"]
    dense = raw[f"gpt_neox.layers.{layer}.attention.dense.weight"]               # (d, d), (out, in)
    attention = params["blocks"][layer]["attn"]
    for h in range(heads):
        for j, projection in enumerate(("query", "key", "value")):
            rows = slice((3 * h + j) * k, (3 * h + j + 1) * k)
            np.testing.assert_array_equal(np.asarray(attention[projection]["kernel"][:, h, :]), fused[rows].T)
            np.testing.assert_array_equal(np.asarray(attention[projection]["bias"][h]), fused_bias[rows])
        np.testing.assert_array_equal(np.asarray(attention["out"]["kernel"][h]), dense[:, h * k:(h + 1) * k].T)
    # the mask of head h counts, by hand: 3 projections x (d x k kernel + k bias) + k x d output rows
    for h in range(heads):
        mask = sj.head_mask(params, f"blocks/{layer}/attn", h)
        assert sum(int(np.sum(m)) for m in jax.tree.leaves(mask)) == 3 * (d * k + k) + k * d
        selected = mask["blocks"][layer]["attn"]["query"]["kernel"]
        assert selected[:, h, :].all() and selected.sum() == d * k


def test_head_ablation_through_its_mask_removes_exactly_that_heads_output():
    # Zeroing the masked value and output coordinates of head h equals subtracting head h's term
    # from the attention output, computed from the same weights by hand.
    model = sj.models.from_pretrained(FIXTURES / "gpt2_tied")
    params, _ = sj.from_nnx(model, "next_token")
    h, layer = 1, 0
    mask = sj.head_mask(params, f"blocks/{layer}/attn", h, projections=("value", "out"))
    ablated = jax.tree.map(lambda p, m: jnp.where(m, 0.0, p), params, mask)
    x = jax.random.normal(jax.random.key(0), (2, 5, model.spec.width))
    attention = model.blocks[layer].attn
    full = attention(x)
    sj.to_nnx(model, ablated)
    without = attention(x)
    sj.to_nnx(model, params)
    a = params["blocks"][layer]["attn"]
    q = jnp.einsum("bsi,id->bsd", x, a["query"]["kernel"][:, h]) + a["query"]["bias"][h][None, None]
    kk = jnp.einsum("bsi,id->bsd", x, a["key"]["kernel"][:, h]) + a["key"]["bias"][h][None, None]
    v = jnp.einsum("bsi,id->bsd", x, a["value"]["kernel"][:, h]) + a["value"]["bias"][h][None, None]
    scores = jnp.einsum("bqd,bkd->bqk", q, kk) / np.sqrt(model.spec.head_dim)
    scores = jnp.where(jnp.tril(jnp.ones((5, 5), bool))[None], scores, -jnp.inf)
    term = jnp.einsum("bqk,bkd,do->bqo", jax.nn.softmax(scores, -1), v, a["out"]["kernel"][h])
    np.testing.assert_allclose(np.asarray(full - without), np.asarray(term), atol=1e-5)


def test_mlp_mask_selects_the_whole_mlp():
    model = sj.models.from_pretrained(FIXTURES / "gpt2_untied")
    params, _ = sj.from_nnx(model, "next_token")
    d, m = model.spec.width, model.spec.mlp_width
    assert model.mlp_paths() == ["blocks/0/mlp", "blocks/1/mlp"]
    mask = sj.mlp_mask(params, model.mlp_paths()[1])
    assert sum(int(np.sum(np.broadcast_to(x, np.shape(p)))) for x, p in
               zip(jax.tree.leaves(mask), jax.tree.leaves(params))) == d * m + m + m * d + d


def test_restricted_llc_on_one_head_of_a_loaded_model_runs():
    model = sj.models.from_pretrained(STORIES / "step600")
    params, loss_fn = sj.from_nnx(model, "next_token")
    data = sj.models.text_batches(STORIES / "train.txt", STORIES / "tokenizer.json", 16,
                                  context_length=model.context_length, vocab_size=model.vocab_size)
    data = {"inputs": data["inputs"][:64]}
    config = sj.SamplerConfig(step_size=1e-4, localization=100.0, num_chains=2, num_draws=8, batch_size=16)
    head = sj.head_mask(params, model.attention_paths()[1], 2)
    result = sj.estimate_llc(loss_fn, params, data, config, key=0, component=head, progress=False)
    assert np.isfinite(result.llc_mean) and not np.any(result.diverged)


def test_bfloat16_weights():
    reference = load_file(str(FIXTURES / "gpt_neox_parallel" / "reference.safetensors"))
    model = sj.models.from_pretrained(FIXTURES / "gpt_neox_parallel", dtype=jnp.bfloat16)
    params, _ = sj.from_nnx(model, "next_token")
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    logits = np.asarray(model(jnp.asarray(reference["input_ids"])), np.float32)
    assert np.abs(logits - reference["logits"]).max() < 0.2


# ---------------------------------------------------------------------------------------------- errors


def _copy(name, tmp_path):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def test_unknown_model_type_is_refused(tmp_path):
    folder = _copy("gpt2_tied", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type='llama' is not supported"):
        sj.models.from_pretrained(folder)


def test_pickled_weights_are_refused_with_the_conversion(tmp_path):
    folder = _copy("gpt2_tied", tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pytorch_model.bin.*safetensors"):
        sj.models.from_pretrained(folder)


def test_missing_tensor_is_named(tmp_path):
    folder = _copy("gpt_neox_parallel", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensor\(s\) \['layers.1.mlp.dense_4h_to_h.bias'\]"):
        sj.models.from_pretrained(folder)


def test_misshaped_tensor_is_named(tmp_path):
    folder = _copy("gpt_neox_parallel", tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["gpt_neox.layers.0.attention.dense.weight"] = np.zeros((16, 12), np.float32)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'gpt_neox.layers.0.attention.dense.weight' has shape \(16, 12\)"):
        sj.models.from_pretrained(folder)


def test_config_that_disagrees_with_the_weights_is_caught(tmp_path):
    folder = _copy("gpt2_tied", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"h.1.*not part of the model"):
        sj.models.from_pretrained(folder)


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        sj.models.from_pretrained(tmp_path / "absent")
    with pytest.raises(ValueError, match="has no config.json"):
        sj.models.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------- series


def test_load_series_reads_a_run_and_parses_steps():
    series = sj.models.load_series([STORIES / "step0", STORIES / "step600"])
    assert series.steps == [0, 600]
    params, loss_fn = sj.from_nnx(series.model, "next_token")
    assert jax.tree.structure(series.checkpoints[0]) == jax.tree.structure(params)
    for checkpoint in series.checkpoints:
        assert jax.tree.map(np.shape, checkpoint) == jax.tree.map(np.shape, params)
    final, _ = sj.from_nnx(sj.models.from_pretrained(STORIES / "step600"), "next_token")
    np.testing.assert_array_equal(series.checkpoints[1]["blocks"][0]["attn"]["key"]["kernel"],
                                  final["blocks"][0]["attn"]["key"]["kernel"])
    data = sj.models.text_batches(STORIES / "probe.txt", STORIES / "tokenizer.json", 16)
    first, last = (float(jnp.mean(loss_fn(c, data))) for c in series.checkpoints)
    assert last < first - 1.0      # the trained checkpoint predicts the grammar


def test_load_series_refuses_mixed_architectures():
    with pytest.raises(ValueError, match="not the same architecture.*width: 16 vs 24"):
        sj.models.load_series([FIXTURES / "gpt_neox_parallel", FIXTURES / "gpt_neox_sequential"])
    with pytest.raises(ValueError, match="non-empty list"):
        sj.models.load_series(str(FIXTURES / "gpt_neox_parallel"))


# ---------------------------------------------------------------------------------------------- batches


def test_token_batches():
    stream = np.arange(23) % 7
    batches = sj.models.token_batches(stream, 5, context_length=8, vocab_size=7)
    assert batches["inputs"].shape == (4, 5) and batches["inputs"].dtype == jnp.int32
    np.testing.assert_array_equal(batches["inputs"][1], stream[5:10])
    assert sj.models.token_batches(np.zeros((3, 6), np.int64))["inputs"].shape == (3, 6)
    with pytest.raises(ValueError, match="seq_len=9 is longer than the model's context_length=8"):
        sj.models.token_batches(stream, 9, context_length=8)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        sj.models.token_batches(stream, 5, vocab_size=6)
    with pytest.raises(ValueError, match="integer ids"):
        sj.models.token_batches(np.zeros(10), 5)


def test_text_batches_and_context_check():
    model = sj.models.from_pretrained(STORIES / "step600")
    batches = sj.models.text_batches(STORIES / "probe.txt", STORIES / "tokenizer.json",
                                     context_length=model.context_length, vocab_size=model.vocab_size)
    assert batches["inputs"].shape[1] == model.context_length and batches["inputs"].shape[0] >= 3
    with pytest.raises(ValueError, match="context_length=32"):
        sj.models.text_batches(STORIES / "probe.txt", STORIES / "tokenizer.json", 64, context_length=model.context_length)
    with pytest.raises(ValueError, match="context_length=32"):
        model(jnp.zeros((1, 33), jnp.int32))
