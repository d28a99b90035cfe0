"""Checks of a LoRA adapter's adapter_config.json against the spec: run when
a spec is loaded for the adapters on this machine, and by the replica before
it hands an adapter to vLLM. Each problem names the adapter and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

from shardserve.api.lora_spec import LoraSpec
from shardserve.api.sources import mounted_path
from shardserve.api.spec import ModelSpec

CONFIG_FILE = "adapter_config.json"


def check_adapter_config(name: str, config: Any, lora: LoraSpec, model: ModelSpec) -> list[str]:
    """Why adapter `name` cannot serve on `model` under `lora`'s bounds ([] when it can).

    The base model is compared only where both name it the same way (a
    Hugging Face id, or the builtin model): a local path in the adapter and an
    s3:// source in the spec may well be the same model. vLLM checks the
    target modules against the model's own layers when it loads the adapter.
    """
    where = f"adapter {name!r}: {CONFIG_FILE}"
    if not isinstance(config, dict):
        return [f"{where}: must be a JSON object"]
    problems = []
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        problems.append(f"{where} peft_type: {peft_type!r} is not LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"{where} r: must be a positive integer (got {rank!r})")
    elif rank > lora.max_rank:
        problems.append(f"{where} r: rank {rank} is above spec.lora.maxRank ({lora.max_rank})")
    modules = config.get("target_modules")
    if not modules or not (isinstance(modules, str) or all(isinstance(m, str) for m in modules)):
        problems.append(f"{where} target_modules: must name the layers the adapter changes (got {modules!r})")
    base = config.get("base_model_name_or_path")
    expected = _comparable_base(model)
    if isinstance(base, str) and base and expected is not None and not _same_model(base, expected, model.scheme):
        problems.append(f"{where} base_model_name_or_path: {base!r} is not the served model {expected!r}")
    return problems


def _comparable_base(model: ModelSpec) -> Optional[str]:
    if model.scheme == "hf":
        return model.location.strip("/")
    if model.scheme == "builtin":
        return model.location
    return None


def _same_model(base: str, expected: str, scheme: str) -> bool:
    # A fine-tune's config often names the base by the local path it was trained from.
    base, expected = base.rstrip("/").lower(), expected.lower()
    name, expected_name = base.rsplit("/", 1)[-1], expected.rsplit("/", 1)[-1]
    if scheme == "builtin":  # built into a directory named for its recipe: tiny-<hash>
        return re.fullmatch(rf"{re.escape(expected_name)}(-[0-9a-f]{{12}})?", name) is not None
    return base == expected or name == expected_name


def read_adapter_config(name: str, directory: Path) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(config, None), or (None, why it cannot be read)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"adapter {name!r}: no {CONFIG_FILE} in {directory}"
    except (OSError, UnicodeDecodeError) as err:
        return None, f"adapter {name!r}: cannot read {path}: {err}"
    except json.JSONDecodeError as err:
        return None, f"adapter {name!r}: {path} is not JSON: {err.msg} at line {err.lineno}"


def check_local_adapters(lora: Optional[LoraSpec], model: ModelSpec) -> list[str]:
    """The configs of the listed file:// adapters, read on this machine
    (`shardserve run`); other sources are checked by the replica that loads them."""
    if lora is None:
        return []
    problems = []
    for adapter in lora.adapters:
        if adapter.scheme != "file":
            continue
        config, unreadable = read_adapter_config(adapter.name, Path(str(mounted_path(adapter.source))))
        problems += [unreadable] if unreadable else check_adapter_config(adapter.name, config, lora, model)
    return [f"spec.lora.adapters: {p}" for p in problems]
