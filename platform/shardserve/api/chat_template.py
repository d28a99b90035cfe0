"""Checks that a chat template compiles, as the replica will compile it.

vLLM renders chat templates with Hugging Face's Jinja setup: a sandboxed
environment with trim_blocks, lstrip_blocks, loop controls and a
`{% generation %}` block tag. The same environment here turns a template
that would fail in every replica's first chat request into an error when
the spec loads.
"""

from __future__ import annotations

from typing import Any, Optional

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationBlock(jinja2.ext.Extension):
    """Parses `{% generation %}...{% endgeneration %}` (Hugging Face marks assistant tokens with it)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> Any:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )


def check_chat_template(text: str, where: str) -> Optional[str]:
    """None when the template compiles, else the problem with its line."""
    try:
        _environment().from_string(text)
    except jinja2.TemplateSyntaxError as err:
        return f"{where}: the chat template does not compile: {err.message} (line {err.lineno})"
    return None
