"""Writes the pretrained-checkpoint fixtures of tests/test_pretrained.py and notebooks/pretrained_lm.ipynb.

Run once, from the repository root, with the reference implementation installed (never needed by
slt_jax or its tests):

    pip install torch==2.13.0 "transformers<6" tokenizers
    python scripts/make_pretrained_fixtures.py

For each small random configuration it writes ``tests/fixtures/pretrained/<name>/`` with what
``save_pretrained`` writes (``config.json``, ``model.safetensors`` or shards with their index) and
``reference.safetensors``: ``input_ids`` int32 ``(batch, seq)`` and ``logits`` float32
``(batch, seq, vocab)`` from transformers' PyTorch model in float32 with eager attention. The
weights are redrawn at a larger scale than transformers' initialisation (std 0.02 gives near-uniform
logits, which would make a 1e-4 comparison weak).

It also writes ``tests/fixtures/pretrained/tiny_stories/``: a word-level ``tokenizer.json``
(the ``tokenizers`` package), ``train.txt`` and ``probe.txt`` generated from a small grammar, and a
4-head, 2-layer GPT-NeoX trained on ``train.txt`` with torch, saved at initialisation (``step0``)
and after training (``step<N>``): the checkpoints the notebook and the series test read.
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pretrained"

# name -> (architecture, config keyword arguments, save keyword arguments)
RANDOM_CONFIGS = {
    "gpt2_tied": ("gpt2", dict(vocab_size=50, n_positions=16, n_embd=16, n_head=2, n_layer=2), {}),
    "gpt2_untied": ("gpt2", dict(vocab_size=37, n_positions=12, n_embd=24, n_head=3, n_layer=2, n_inner=40,
                                 activation_function="gelu", scale_attn_by_inverse_layer_idx=True,
                                 tie_word_embeddings=False), {}),
    "gpt_neox_parallel": ("gpt_neox", dict(vocab_size=64, max_position_embeddings=16, hidden_size=16,
                                           num_attention_heads=2, num_hidden_layers=2, intermediate_size=48,
                                           rotary_pct=0.25, use_parallel_residual=True), {}),
    "gpt_neox_sequential": ("gpt_neox", dict(vocab_size=45, max_position_embeddings=12, hidden_size=24,
                                             num_attention_heads=3, num_hidden_layers=2, intermediate_size=40,
                                             rotary_pct=0.5, rotary_emb_base=500, use_parallel_residual=False), {}),
    "gpt_neox_sharded": ("gpt_neox", dict(vocab_size=40, max_position_embeddings=10, hidden_size=24,
                                          num_attention_heads=2, num_hidden_layers=2, intermediate_size=32,
                                          rotary_pct=1.0, attention_bias=False, use_parallel_residual=True),
                         dict(max_shard_size="12KB")),
}
# The sequential GPT-NeoX keeps the older config keys (rotary_pct, rotary_emb_base) that Pythia's
# published config.json files use, instead of transformers 5's rope_parameters.
LEGACY_CONFIG = ("gpt_neox_sequential",)


def randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            is_norm = any(key in name for key in ("ln_", "layernorm", "layer_norm"))
            if is_norm and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * noise)
            elif parameter.ndim == 1:
                parameter.copy_(0.1 * noise)
            elif any(key in name for key in ("wte", "wpe", "embed")):
                parameter.copy_(0.5 * noise)
            else:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5)


def build(architecture: str, kwargs: dict):
    if architecture == "gpt2":
        config = GPT2Config(**kwargs, attn_implementation="eager")
        return GPT2LMHeadModel(config).eval(), config.n_positions
    config = GPTNeoXConfig(**kwargs, attn_implementation="eager")
    return GPTNeoXForCausalLM(config).eval(), config.max_position_embeddings


def legacy_config(folder: pathlib.Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rotary_pct"], config["rotary_emb_base"] = rope["partial_rotary_factor"], rope["rope_theta"]
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))


def write_random(name: str, seed: int) -> None:
    architecture, kwargs, save = RANDOM_CONFIGS[name]
    torch.manual_seed(seed)
    model, context = build(architecture, kwargs)
    randomize(model, seed)
    folder = ROOT / name
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, **save)
    (folder / "generation_config.json").unlink(missing_ok=True)
    if name in LEGACY_CONFIG:
        legacy_config(folder)
    generator = torch.Generator().manual_seed(seed + 1)
    input_ids = torch.randint(kwargs["vocab_size"], (3, context), generator=generator)
    with torch.no_grad():
        logits = model(input_ids).logits
    save_file({"input_ids": input_ids.numpy().astype(np.int32), "logits": logits.numpy().astype(np.float32)},
              str(folder / "reference.safetensors"))
    files = sorted(p.name for p in folder.iterdir())
    print(f"{name}: {files}, logits range [{logits.min():.2f}, {logits.max():.2f}]")


# ----------------------------------------------------------------------------- the notebook's model

SUBJECTS = ["the cat", "the dog", "a bird", "the old man", "my sister", "the teacher", "a small child", "the farmer"]
VERBS = ["sees", "likes", "finds", "follows", "helps", "calls", "watches", "feeds"]
OBJECTS = ["the ball", "a red box", "the green tree", "the river", "a big house", "the little fish", "the moon",
           "a warm cup"]
PLACES = ["in the park", "at home", "by the sea", "on the hill", "after school", "at night"]


def sentence(rng: random.Random) -> str:
    words = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
    return f"{words} {rng.choice(PLACES)} ." if rng.random() < 0.5 else f"{words} ."


def write_tokenizer(folder: pathlib.Path, text: str) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(text.split()))
    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))


def write_tiny_stories(steps: int = 600, seed: int = 0) -> None:
    from tokenizers import Tokenizer

    folder = ROOT / "tiny_stories"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    train = " ".join(sentence(rng) for _ in range(3000))
    # The probe: fresh sentences, then a sentence repeated (its second copy is predictable in context).
    repeated = " ".join(sentence(rng) for _ in range(3))
    probe = " ".join(sentence(rng) for _ in range(12)) + " " + repeated + " " + repeated
    (folder / "train.txt").write_text(train + "\n")
    (folder / "probe.txt").write_text(probe + "\n")
    write_tokenizer(folder, train)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = torch.tensor(tokenizer.encode(train).ids)
    context = 32
    config = GPTNeoXConfig(vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=context, hidden_size=32,
                           num_attention_heads=4, num_hidden_layers=2, intermediate_size=64, rotary_pct=0.5,
                           use_parallel_residual=True, attn_implementation="eager")
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config)
    model.save_pretrained(folder / "step0")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        starts = torch.randint(len(ids) - context, (32,), generator=generator)
        batch = torch.stack([ids[s:s + context] for s in starts])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"tiny_stories step {step}: loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(folder / f"step{steps}")
    for sub in ("step0", f"step{steps}"):
        (folder / sub / "generation_config.json").unlink(missing_ok=True)
    print(f"tiny_stories: vocab {tokenizer.get_vocab_size()}, {sum(p.numel() for p in model.parameters())} parameters")


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(RANDOM_CONFIGS):
        write_random(name, seed)
    write_tiny_stories()
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    print(f"total {total / 1024:.0f} KiB in {ROOT}")


if __name__ == "__main__":
    main()
