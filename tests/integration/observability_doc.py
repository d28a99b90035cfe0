"""The metric names docs/observability.md promises, by section: the tests
that run the stack hold each table to what the stack exports."""

from __future__ import annotations

import re
from pathlib import Path

OBSERVABILITY = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


def documented_metrics(section_title: str) -> list[str]:
    """The `ray_*` names in the first column of the table under `### <section_title>`."""
    text = OBSERVABILITY.read_text()
    heading = f"\n### {section_title}\n"
    assert heading in text, f"docs/observability.md has no '### {section_title}' section"
    section = text[text.index(heading) + 1:]
    section = section[: section.index("\n#", 1)]
    return re.findall(r"^\| `(ray_[a-z_:]+)`", section, flags=re.M)
