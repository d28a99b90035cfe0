"""The YAML parser the code uses (libyaml's when PyYAML has it) reads the same documents as PyYAML's own."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shardserve.api.yaml_loading import safe_load, safe_load_all

ROOT = Path(__file__).resolve().parents[1]
# What the project parses: specs, the CRD and install manifests, rendered children (serveConfigV2 inside).
FILES = sorted([*ROOT.glob("manifests/**/*.yaml"), *ROOT.glob("tests/operator/golden/*.yaml")])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_both_parsers_read_the_same_documents(path):
    text = path.read_text()
    documents = list(safe_load_all(text))
    assert documents and documents == list(yaml.load_all(text, Loader=yaml.SafeLoader))
    for doc in documents:
        if (doc or {}).get("kind") == "RayService":
            serve_config = doc["spec"]["serveConfigV2"]
            assert safe_load(serve_config) == yaml.load(serve_config, Loader=yaml.SafeLoader)


def test_a_syntax_error_names_the_same_place_in_both():
    text = "spec:\n  replicas: 1\n  engine: [unclosed\n"
    places = []
    for load in (lambda: safe_load(text), lambda: yaml.load(text, Loader=yaml.SafeLoader)):
        with pytest.raises(yaml.MarkedYAMLError) as caught:
            load()
        places.append((caught.value.problem_mark.line, caught.value.problem_mark.column))
    assert places[0] == places[1]
