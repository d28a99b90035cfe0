"""A deterministic tiny Llama model built locally, so tests and demos never need a model hub.

Weights are random (fixed seed) and the BPE tokenizer is trained on an embedded corpus, so the
output is gibberish, but the shapes are real: vLLM loads it like any HF Llama checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TINY_MODEL_ID = "tiny"
# Bump when the build code changes in a way the recipe constants below do not capture.
RECIPE_VERSION = 1
SEED = 1234
# Larger than the usual 0.02 so attention/MLP actually perturb the residual stream and greedy
# decoding does not settle into a single repeated token.
INIT_STD = 0.2

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2; byte-level BPE never needs <unk>
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 2,  # divisible by 2 for pipeline parallel 2
    "hidden_size": 256,
    "num_attention_heads": 4,  # head_dim 64: vLLM's CPU attention rejects small head sizes
    "num_key_value_heads": 2,  # divisible by 2 for tensor parallel 2
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A model is only as good as the data it has seen,
and this one has seen very little: a few paragraphs about foxes, rivers, servers and the weather.
Hello world! How are you today? I am fine, thank you. What time is it? It is time to serve.

The river runs through the valley and into the sea. In the morning the water is cold and clear;
in the evening it turns gold under the setting sun. People walk along the bank, talking about
their work, their families, and the things they want to build next year.

A cluster of machines answers requests from many users at once. Each request is split into
tokens, the tokens are processed by the model, and new tokens are generated one at a time.
When one machine is not enough, the model is sharded: the layers are split across stages and
the attention heads are split across devices, so every part of the work runs in parallel.

The weather report said it would rain on Monday, clear up on Tuesday, and be warm and sunny for
the rest of the week. Children played in the park while their parents read books, drank coffee,
and watched the clouds move slowly across the sky. Numbers like 0, 1, 2, 3, 42 and 2048 appear
too, along with punctuation: commas, periods, questions? and exclamations!
"""


def _recipe_hash() -> str:
    recipe = {"version": RECIPE_VERSION, "seed": SEED, "std": INIT_STD, "config": TINY_CONFIG,
              "special": SPECIAL_TOKENS, "template": CHAT_TEMPLATE, "corpus": _CORPUS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _weights() -> dict[str, Any]:
    import numpy as np

    # numpy's Generator streams are stable across versions and platforms, unlike torch's.
    rng = np.random.default_rng(SEED)
    c = TINY_CONFIG
    h, inter, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def rand(*shape: int) -> Any:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(INIT_STD)).astype(np.float32)

    w = {"model.embed_tokens.weight": rand(v, h)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(q, h)
        w[p + "self_attn.k_proj.weight"] = rand(kv, h)
        w[p + "self_attn.v_proj.weight"] = rand(kv, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, q)
        w[p + "mlp.gate_proj.weight"] = rand(inter, h)
        w[p + "mlp.up_proj.weight"] = rand(inter, h)
        w[p + "mlp.down_proj.weight"] = rand(h, inter)
        w[p + "input_layernorm.weight"] = np.ones(h, dtype=np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(h, dtype=np.float32)
    w["model.norm.weight"] = np.ones(h, dtype=np.float32)
    w["lm_head.weight"] = rand(v, h)
    return w


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_CONFIG["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        # The full byte alphabet makes every string encodable, whatever the corpus lacked.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    if tok.get_vocab_size() != TINY_CONFIG["vocab_size"]:
        raise RuntimeError(f"tokenizer vocab {tok.get_vocab_size()} != {TINY_CONFIG['vocab_size']}; "
                           "corpus too small for the requested merges")
    # Prepend <s> like Llama tokenizers do, so vLLM prompts start with BOS.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])
    return tok


def _write_model(out: Path) -> None:
    from safetensors.numpy import save_file

    _write_json(out / "config.json", TINY_CONFIG)
    _write_json(out / "generation_config.json",
                {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID})
    save_file(_weights(), str(out / "model.safetensors"), metadata={"format": "pt"})
    _train_tokenizer().save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {
        **special, "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE,
        "model_max_length": TINY_CONFIG["max_position_embeddings"], "clean_up_tokenization_spaces": False,
    })


def build_tiny_model(dest: Path) -> Path:
    """Build the tiny model into `dest` (which must not exist, or be empty) and return it.

    Files are written to a temp dir beside `dest` and renamed into place, so `dest` is either
    absent or complete. Raises FileExistsError (and discards the build) if `dest` is non-empty.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        _write_model(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the model dir should be shareable like any other
        try:
            os.rename(tmp, dest)  # atomic; replaces only an empty dir
        except OSError as e:
            if dest.is_dir() and any(dest.iterdir()):
                raise FileExistsError(f"{dest} already exists") from e
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    log.info("built tiny model at %s", dest)
    return dest


def _default_cache_dir() -> Path:
    env = os.environ.get("SHARDSERVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "shardserve"


def builtin_model_dir(name: str = TINY_MODEL_ID, cache_dir: Path | None = None) -> Path:
    """Where a builtin model lives once built (does not build it)."""
    if name != TINY_MODEL_ID:
        raise ValueError(f"unknown builtin model {name!r}")
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    return root / "models" / f"{TINY_MODEL_ID}-{_recipe_hash()}"


def ensure_builtin_model(name: str = TINY_MODEL_ID, cache_dir: Path | None = None) -> Path:
    """The builtin model's directory, built on first use."""
    builtin_model_dir(name)  # rejects unknown names
    return tiny_model_path(cache_dir)


def tiny_model_path(cache_dir: Path | None = None) -> Path:
    """Return the cached tiny model dir, building it on first use; safe across processes."""
    target = builtin_model_dir(TINY_MODEL_ID, cache_dir)
    models_dir = target.parent
    if target.is_dir():  # only ever appears via the atomic rename, so it is complete
        return target
    _remove_stale_temps(models_dir, target.name)
    try:
        return build_tiny_model(target)
    except FileExistsError:
        log.info("another process built %s first; using it", target)
        return target


def _remove_stale_temps(models_dir: Path, name: str, max_age_s: float = 3600.0) -> None:
    # Leftovers of crashed builds; the age limit spares temp dirs of builds still running.
    if not models_dir.is_dir():
        return
    for p in models_dir.glob(f".{name}.tmp-*"):
        try:
            if time.time() - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass
