"""docs/spec.md is the ModelDeployment reference generated from the CRD's descriptions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from shardserve.api.crd import build_crd
from shardserve.api.spec_docs import COMMAND, render_spec_docs

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "spec.md"


def test_committed_spec_docs_match_a_fresh_generation():
    assert DOC.is_file(), f"docs/spec.md is missing; run: {COMMAND}"
    assert DOC.read_text() == render_spec_docs(), f"docs/spec.md differs from the CRD; run: {COMMAND}"


def test_every_spec_field_and_cel_rule_is_on_the_page():
    text = render_spec_docs()
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node):
        for name, child in node.get("properties", {}).items():
            yield name, child
            yield from walk(child)
            if isinstance(child.get("items"), dict):
                yield from walk(child["items"])
        for rule in node.get("x-kubernetes-validations", []):
            yield None, rule

    for name, node in walk(schema["properties"]["spec"]):
        if name is not None:
            assert f"| `{name}` |" in text, name
        else:
            assert " ".join(node["message"].split()) in text, node["message"]


def test_check_flags_a_stale_page(tmp_path):
    stale = tmp_path / "spec.md"
    stale.write_text(render_spec_docs().replace("maxReplicas", "maxreplicas"))
    cli = [sys.executable, "-m", "shardserve.api.spec_docs"]
    checked = subprocess.run(cli + ["--check", str(DOC), "--check", str(stale)],
                             check=False, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1
    assert str(stale) in checked.stderr and str(DOC) not in checked.stderr
    fresh = tmp_path / "fresh.md"
    assert subprocess.run(cli + ["-o", str(fresh)], check=False, timeout=60).returncode == 0
    assert fresh.read_text() == render_spec_docs()
