"""API keys for /v1/*: where they come from, and the constant-time check.

Sources, read in each model replica's process (never at build time, so no
key travels inside the Serve config):

- `SHARDSERVE_API_KEYS`: comma-separated keys, each `KEY` or `NAME=KEY`
  (local runs);
- `SHARDSERVE_API_KEYS_FILE`: a file with one key per line (`KEY` or
  `NAME=KEY`; blank lines and lines starting with `#` are skipped), or a
  directory in which every regular file holds one key — the shape of a
  mounted Kubernetes Secret, where the entry's name names the key.

A key's name is its tenant (spec.tenants); a key without one is the
default tenant's. A key that itself contains `=` is given with a name.

The file source is re-read when the files' modification times change,
checked at most once per `RECHECK_INTERVAL_S`: keys rotate without a
restart and a request costs no file read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Optional

from shardserve.api.contract import KEYS_ENV, KEYS_FILE_ENV

logger = logging.getLogger(__name__)

RECHECK_INTERVAL_S = 1.0

__all__ = ["KeyStore", "parse_keys", "parse_named_keys", "bearer_token", "key_matches", "match_key",
           "keys_configured"]

_NAME = re.compile(r"^[-._a-zA-Z0-9]+$")  # a Secret's data key


def parse_keys(text: str, *, separator: Optional[str] = None) -> tuple[str, ...]:
    """Keys from text: one per line (or split on `separator`); blanks and # comments dropped."""
    parts = text.split(separator) if separator else text.splitlines()
    return tuple(p.strip() for p in parts if p.strip() and not p.strip().startswith("#"))


def parse_named_keys(text: str, *, separator: Optional[str] = None,
                     name: Optional[str] = None) -> tuple[tuple[Optional[str], str], ...]:
    """(name, key) pairs: `NAME=KEY` entries carry their name, plain keys get `name`."""
    entries = []
    for part in parse_keys(text, separator=separator):
        label, sep, key = part.partition("=")
        named = sep and _NAME.match(label.strip()) and key.strip()
        entries.append((label.strip(), key.strip()) if named else (name, part))
    return tuple(entries)


def match_key(token: Optional[str], entries: Iterable[tuple[Optional[str], str]]) -> tuple[bool, Optional[str]]:
    """Whether `token` is one of the keys, and that key's name; constant-time
    over every key, as `key_matches`."""
    if token is None:
        return False, None
    given = _digest(token.encode("utf-8", "surrogatepass"))
    found, found_name = False, None
    for name, key in entries:
        same = hmac.compare_digest(given, _digest(key.encode("utf-8")))
        found |= same
        found_name = name if same else found_name
    return found, found_name


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def key_matches(token: Optional[str], keys: Iterable[str]) -> bool:
    """Constant-time over every key: the time tells neither which key was close
    nor how long the keys are (compare_digest runs on SHA-256 digests, all of
    one length; on raw bytes its time depends on their lengths)."""
    return match_key(token, ((None, key) for key in keys))[0]


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def keys_configured(environ: Optional[Mapping[str, str]] = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get(KEYS_ENV) or env.get(KEYS_FILE_ENV))


def _key_files(path: Path) -> list[Path]:
    if path.is_dir():
        # A mounted Secret also holds `..data` links; its entries are the plain names.
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    files = _key_files(path)
    return tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)


def _read_keys(path: Path) -> tuple[tuple[Optional[str], str], ...]:
    if path.is_dir():
        entries: list[tuple[Optional[str], str]] = []
        for f in _key_files(path):
            entries.extend((f.name, key) for key in parse_keys(f.read_text()))
        return tuple(entries)
    return parse_named_keys(path.read_text())


class KeyStore:
    """The current keys and their names; cheap (a stat at most once a second)."""

    def __init__(self, environ: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.monotonic):
        env = dict(os.environ if environ is None else environ)
        self._inline = parse_named_keys(env.get(KEYS_ENV, ""), separator=",")
        file = env.get(KEYS_FILE_ENV)
        self._path = Path(file) if file else None
        self._clock = clock
        self._lock = threading.Lock()
        self._from_file: tuple[tuple[Optional[str], str], ...] = ()
        self._signature: Optional[tuple[tuple[str, int, int], ...]] = None
        self._checked_at = float("-inf")
        if self._path is not None:
            self._refresh(force=True)

    def keys(self) -> tuple[str, ...]:
        return tuple(key for _, key in self.entries())

    def entries(self) -> tuple[tuple[Optional[str], str], ...]:
        """(name, key) of every current key; the name is None for unnamed keys."""
        if self._path is not None and self._clock() - self._checked_at >= RECHECK_INTERVAL_S:
            self._refresh()
        return self._inline + self._from_file

    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            self._checked_at = self._clock()
            path = self._path
            if path is None:
                return
            try:
                signature = _signature(path)
                if not force and signature == self._signature:
                    return
                keys = _read_keys(path)
            except OSError as err:
                # Keep the last good keys: a rotation in progress must not lock everyone out.
                logger.warning("cannot read API keys from %s: %s", self._path, err)
                return
            if not keys:
                logger.warning("no API keys in %s: every /v1 request will be refused", self._path)
            elif self._signature is not None:
                logger.info("API keys reloaded from %s (%d keys)", self._path, len(keys))
            self._signature, self._from_file = signature, keys
