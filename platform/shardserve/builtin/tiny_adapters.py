"""Deterministic LoRA adapters of the builtin tiny model, built like the model,
so tests and demos of adapters need no download.

Each is PEFT's on-disk format (adapter_config.json and
adapter_model.safetensors) with seeded random weights on the attention's q
and v projections, large enough that greedy output differs from the base
model's and from the other adapter's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from shardserve.api.sources import BUILTIN_ADAPTERS
from shardserve.builtin.tiny import TINY_CONFIG, TINY_MODEL_ID, builtin_model_dir

log = logging.getLogger(__name__)

RANK = 8
INIT_STD = 0.2
TARGET_MODULES = ("q_proj", "v_proj")
SEEDS = {name: seed for seed, name in enumerate(BUILTIN_ADAPTERS, start=101)}


def adapter_config(name: str) -> dict[str, Any]:
    """The adapter_config.json of builtin adapter `name` (known without building it)."""
    if name not in SEEDS:
        raise ValueError(f"unknown builtin adapter {name!r}; builtin adapters are {', '.join(SEEDS)}")
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0,
        "target_modules": list(TARGET_MODULES), "bias": "none", "fan_in_fan_out": False,
        "base_model_name_or_path": TINY_MODEL_ID,
    }


def _weights(name: str) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(SEEDS[name])
    c = TINY_CONFIG
    hidden, head = c["hidden_size"], c["head_dim"]
    outputs = {"q_proj": c["num_attention_heads"] * head, "v_proj": c["num_key_value_heads"] * head}
    weights = {}
    for layer in range(c["num_hidden_layers"]):
        for module in TARGET_MODULES:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}."
            weights[prefix + "lora_A.weight"] = (rng.standard_normal((RANK, hidden)) * INIT_STD).astype(np.float32)
            weights[prefix + "lora_B.weight"] = (rng.standard_normal((outputs[module], RANK)) * INIT_STD).astype(np.float32)
    return weights


def _recipe_hash(name: str) -> str:
    recipe = {"config": adapter_config(name), "seed": SEEDS[name], "std": INIT_STD, "base": builtin_model_dir().name}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def builtin_adapter_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Where builtin adapter `name` lives once built (beside the tiny model)."""
    return builtin_model_dir(TINY_MODEL_ID, cache_dir).parent.parent / "adapters" / f"{name}-{_recipe_hash(name)}"


def ensure_builtin_adapter(name: str, cache_dir: Path | None = None) -> Path:
    """The adapter's directory, built on first use; safe across processes (an atomic rename)."""
    from safetensors.numpy import save_file

    target = builtin_adapter_dir(name, cache_dir)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(adapter_config(name), indent=2, sort_keys=True) + "\n")
        save_file(_weights(name), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target.is_dir() and any(target.iterdir())):
                raise
            log.info("another process built %s first; using it", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
