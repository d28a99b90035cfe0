"""Unit tests for shardserve.builtin.tiny (no vLLM: builds take well under a second)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from shardserve.builtin import tiny as models


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.build_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


def test_build_is_byte_identical(tmp_path: Path, model_dir: Path) -> None:
    again = models.build_tiny_model(tmp_path / "again")
    assert _hashes(again) == _hashes(model_dir)
    assert set(_hashes(model_dir)) == {
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"}
    assert not list(tmp_path.glob(".*tmp-*")), "temp dir must be gone after a successful build"


def test_config_fits_cpu_attention_and_parallelism(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg == models.TINY_CONFIG
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] // cfg["num_attention_heads"] == cfg["head_dim"] == 64
    assert cfg["num_attention_heads"] % 2 == 0 and cfg["num_key_value_heads"] % 2 == 0  # TP=2
    assert cfg["num_hidden_layers"] % 2 == 0  # PP=2


def test_weights_have_hf_llama_names_and_shapes(model_dir: Path) -> None:
    from safetensors import safe_open

    c = models.TINY_CONFIG
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        assert f.get_slice("lm_head.weight").get_shape() == [c["vocab_size"], c["hidden_size"]]
        assert f.get_slice("model.layers.1.self_attn.k_proj.weight").get_shape() == [
            c["num_key_value_heads"] * c["head_dim"], c["hidden_size"]]
    assert len(keys) == 3 + 9 * c["num_hidden_layers"]
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.down_proj.weight"} <= keys


def test_tokenizer_loads_and_round_trips_unicode(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) == models.TINY_CONFIG["vocab_size"]
    assert (tok.bos_token_id, tok.eos_token_id) == (models.BOS_ID, models.EOS_ID)
    text = "Hello wörld — 日本語 🚀 naïve café\n\ttabs"
    ids = tok.encode(text)
    assert ids[0] == models.BOS_ID
    assert max(ids) < models.TINY_CONFIG["vocab_size"]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"
    assert not tok.apply_chat_template(msgs, tokenize=False).endswith("<|assistant|>\n")


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = models.tiny_model_path(tmp_path)
    assert first.parent == tmp_path / "models" and first.name.startswith(f"{models.TINY_MODEL_ID}-")
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    def no_build(dest: Path) -> Path:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(models, "build_tiny_model", no_build)
    assert models.tiny_model_path(tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime


def test_env_var_picks_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDSERVE_CACHE", str(tmp_path))
    assert models.tiny_model_path().parent == tmp_path / "models"


def test_interrupted_build_is_not_cached(tmp_path: Path) -> None:
    target = models.tiny_model_path(tmp_path)
    shutil.rmtree(target)
    leftover = target.parent / f".{target.name}.tmp-crashed"  # what a killed build leaves behind
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    rebuilt = models.tiny_model_path(tmp_path)
    assert rebuilt == target and (rebuilt / "model.safetensors").is_file()
    assert json.loads((rebuilt / "config.json").read_text()) == models.TINY_CONFIG
    assert leftover.is_dir(), "a fresh temp dir may belong to a build still running"


def test_stale_temp_dirs_are_removed(tmp_path: Path) -> None:
    target = models.tiny_model_path(tmp_path)
    shutil.rmtree(target)
    stale = target.parent / f".{target.name}.tmp-old"
    stale.mkdir()
    os.utime(stale, (0, 0))
    models.tiny_model_path(tmp_path)
    assert not stale.exists()


def test_lost_race_discards_own_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "m"
    models.build_tiny_model(dest)
    with pytest.raises(FileExistsError):
        models.build_tiny_model(dest)
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "loser must discard its temp dir"

    real_build = models.build_tiny_model

    def other_process_wins(target: Path) -> Path:
        real_build(target)  # the other process renames first...
        return real_build(target)  # ...so ours collides

    monkeypatch.setattr(models, "build_tiny_model", other_process_wins)
    target = models.tiny_model_path(tmp_path)
    assert (target / "model.safetensors").is_file()
    assert [p.name for p in target.parent.iterdir()] == [target.name]
