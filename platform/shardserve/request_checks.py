"""Checks on a request body before it reaches a replica (pure).

The engine's tokenizer cannot take text that is not valid Unicode and fails
with a server error deep inside the replica; refusing it here is a clear 400.
"""

from __future__ import annotations

import json
import re
from typing import Optional

# JSON can smuggle half of a UTF-16 surrogate pair in as an escape; raw
# UTF-8 bytes cannot carry one at all, so bodies without such an escape skip
# the slower full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def find_invalid_unicode(raw_body: bytes) -> Optional[str]:
    """A message when some string in the JSON body is not valid Unicode."""
    if not _SURROGATE_ESCAPE.search(raw_body):
        return None
    try:
        decoded = json.loads(raw_body)
        json.dumps(decoded, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "request contains a lone UTF-16 surrogate (\\ud800-\\udfff escape); text must be valid Unicode"
    except ValueError:
        return None  # not JSON: the body parser reports that
    return None
