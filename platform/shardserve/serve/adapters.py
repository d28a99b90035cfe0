"""LoRA adapters in a model replica: which adapter a request names, where its
files come from, and its load into vLLM.

Ray Serve LLM drives the loading: a request that names an adapter carries it
as Serve's multiplexed model id, LLMServer asks its loader (`model_downloader`)
for it inside Serve's multiplexing, which keeps at most
`spec.lora.maxCpuAdapters` per replica (least recently used out first) and
tells Serve's router which replica holds which. Ray's own loader reads only
cloud storage, so `AdapterLoader` resolves every source the spec accepts
(hf, pvc, file, builtin; s3 and gs through Ray's downloader), checks the
adapter's config, and loads it into vLLM itself, so a bad adapter answers
with an error that names it. When Serve evicts an adapter, vLLM frees it too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import PrivateAttr

from shardserve.api.adapter_config import check_adapter_config, read_adapter_config
from shardserve.api.lora_spec import ADAPTER_NAME_PATTERN, LoraSpec
from shardserve.api.sources import mounted_path
from shardserve.api.spec import ModelSpec
from shardserve.serve.ray_private import DiskMultiplexConfig, LoraMirrorConfig, LoraModelLoader

logger = logging.getLogger(__name__)
_NAME = re.compile(ADAPTER_NAME_PATTERN)
EVICT_TIMEOUT_S = 60.0
# How long a replica trusts its view of the adapters the others hold; it
# reads it again only for a request whose adapter it does not hold.
PEERS_TTL_S = 1.0


class AdapterError(Exception):
    """A request's adapter cannot serve it; the client gets `status_code`."""

    status_code = 500
    code = "adapter_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class AdapterNotFound(AdapterError):
    status_code, code = 404, "model_not_found"


class AdapterRejected(AdapterError):
    """The adapter's files do not fit the served model or the spec's bounds."""

    status_code, code = 400, "invalid_adapter"


class AdapterUnavailable(AdapterError):
    """Its source could not be read now (network, storage); a retry may work."""

    status_code, code = 503, "adapter_unavailable"


@dataclass(frozen=True)
class AdapterNames:
    """The names a request's `model` may take: the model's id, a listed adapter,
    or (with a dynamic source) any adapter name; `<model id>:<adapter>` too."""

    model_id: str
    listed: tuple[str, ...] = ()
    dynamic: bool = False

    @classmethod
    def from_spec(cls, model_id: str, lora: Optional[LoraSpec]) -> AdapterNames:
        if lora is None:
            return cls(model_id)
        return cls(model_id, tuple(a.name for a in lora.adapters), lora.dynamic_source is not None)

    def adapter_for(self, model: str) -> Optional[str]:
        """The adapter `model` names, None for the base model; AdapterNotFound otherwise."""
        if model == self.model_id:
            return None
        name = model.removeprefix(f"{self.model_id}:") if self.listed or self.dynamic else model
        if name in self.listed or (self.dynamic and _NAME.match(name) and len(name) <= 128):
            return name
        raise AdapterNotFound(f"The model `{model}` does not exist. This endpoint serves `{self.model_id}`"
                              + (" and its LoRA adapters; GET /v1/models lists them." if self.listed or self.dynamic
                                 else "."))


def adapter_source(lora: LoraSpec, name: str) -> tuple[str, Optional[str], bool]:
    """(source URI, revision, listed?) of adapter `name`."""
    listed = lora.find(name)
    if listed is not None:
        return listed.source, listed.revision, True
    assert lora.dynamic_source is not None  # AdapterNames let only listed names through otherwise
    return f"{lora.dynamic_source.rstrip('/')}/{name}", None, False


def _download_hf(repo: str, revision: Optional[str], name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo.strip("/"), revision=revision))
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise AdapterNotFound(f"adapter {name!r}: hf://{repo.strip('/')} cannot be found"
                              + (f" at revision {revision!r}" if revision else "")) from err
    except (HfHubHTTPError, OSError) as err:
        raise AdapterUnavailable(f"adapter {name!r}: downloading hf://{repo.strip('/')} failed: {err}") from err


class ResidentAdapter(DiskMultiplexConfig):
    """An adapter loaded in this replica, as Serve's multiplexing holds it.

    Serve calls `__del__` (in a worker thread) when it evicts the adapter;
    vLLM then frees the adapter's memory. The files stay on disk, and the next
    request for it loads it again.
    """

    _on_evict: Optional[Callable[[], Any]] = PrivateAttr(default=None)
    _loop: Optional[asyncio.AbstractEventLoop] = PrivateAttr(default=None)
    _evicted: bool = PrivateAttr(default=False)

    def __del__(self) -> None:
        # Also reached when the object is collected, after Serve dropped it (or
        # at exit): only the first call, with the replica's loop running, frees it.
        if self._evicted or self._on_evict is None or self._loop is None or self._loop.is_closed():
            return
        self._evicted = True
        future = asyncio.run_coroutine_threadsafe(self._on_evict(), self._loop)
        if not self._on_loop_thread():  # Serve's eviction: done before the next adapter loads
            try:
                future.result(timeout=EVICT_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - a failed eviction must not fail the load that caused it
                logger.warning("evicting adapter %s failed: %r", self.model_id, err)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False


class AdapterLoader(LoraModelLoader):
    """LLMServer's `model_downloader`: finds, checks and loads one adapter.

    Built by LLMServer with Ray's download settings; the replica binds the
    rest (`functools.partial`). `load_into_engine(name, path)` loads it into
    vLLM and `evict_from_engine(name)` frees it; `on_loaded`/`on_evicted`
    report residency (metrics, status).
    """

    def __init__(self, *, lora: LoraSpec, model: ModelSpec,
                 load_into_engine: Callable[[str, str], Any], evict_from_engine: Callable[[str], Any],
                 on_loaded: Callable[[str, float], None], on_evicted: Callable[[str], None],
                 builtin_dir: Callable[[str], Path], **ray_settings: Any):
        super().__init__(**ray_settings)
        self._lora, self._model = lora, model
        self._load_into_engine, self._evict_from_engine = load_into_engine, evict_from_engine
        self._on_loaded, self._on_evicted = on_loaded, on_evicted
        self._builtin_dir = builtin_dir

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> ResidentAdapter:
        name, start = lora_model_id, time.monotonic()
        path = await self.fetch(name)
        config, unreadable = await asyncio.to_thread(read_adapter_config, name, path)
        if unreadable:
            raise AdapterRejected(unreadable)
        problems = check_adapter_config(name, config, self._lora, self._model)
        if problems:
            raise AdapterRejected("; ".join(problems))
        await self._load_into_engine(name, str(path))
        seconds = time.monotonic() - start
        self._on_loaded(name, seconds)
        logger.info("adapter %s loaded from %s in %.2fs", name, path, seconds)
        adapter = ResidentAdapter(model_id=name, max_total_tokens=None, local_path=str(path), lora_assigned_int_id=0)
        adapter._on_evict, adapter._loop = (lambda: self._evict(name)), asyncio.get_running_loop()
        return adapter

    async def _evict(self, name: str) -> None:
        await self._evict_from_engine(name)
        self._on_evicted(name)
        logger.info("adapter %s evicted", name)

    async def fetch(self, name: str) -> Path:
        """The adapter's directory on this machine, downloaded when it must be."""
        source, revision, listed = adapter_source(self._lora, name)
        scheme, _, location = source.partition("://")
        if scheme == "builtin":
            return await asyncio.to_thread(self._builtin_dir, location)
        if scheme == "hf":
            return await asyncio.to_thread(_download_hf, location, revision, name)
        mounted = mounted_path(source)
        if mounted is not None:
            directory = Path(mounted)
            if not directory.is_dir():
                raise AdapterNotFound(f"adapter {name!r}: {source} is not a directory")
            return directory
        # s3:// and gs://: Ray's downloader, with its timeout and retries.
        # Ray names the download directory by what follows the id's ':'.
        ray_id = f"{self._model.id}:{name}"
        mirror = LoraMirrorConfig(lora_model_id=ray_id, bucket_uri=source, max_total_tokens=None)
        try:
            disk = await self.load_model(ray_id, mirror)
        except Exception as err:
            raise AdapterUnavailable(f"adapter {name!r}: downloading {source} failed: {err}") from err
        directory = Path(disk.local_path)
        if not (directory / "adapter_config.json").exists() and not listed:
            raise AdapterNotFound(f"adapter {name!r}: nothing under {source}")
        return directory


def serve_here(adapter: str, held_here: Collection[str], held_elsewhere: Mapping[str, Collection[str]]) -> bool:
    """Whether this replica serves a request for `adapter`: when it holds the
    adapter, or when no other replica does (it loads it then, and the request
    takes no hop). Otherwise Serve's router sends it to one that holds it."""
    return adapter in held_here or not any(adapter in held for held in held_elsewhere.values())


class ReplicaAdapters:
    """A replica's adapters: the names requests may use, the ones it holds now
    (name -> seconds its load took), the ones the other replicas hold (read
    through `peers()`, at most every PEERS_TTL_S), and /v1/models cards."""

    def __init__(self, names: AdapterNames, card: Callable[[str], Any],
                 peers: Optional[Callable[[], Mapping[str, Collection[str]]]] = None):
        self.names = names
        self.resident: dict[str, float] = {}
        self._card, self._read_peers = card, peers
        self._peers: Mapping[str, Collection[str]] = {}
        self._peers_read_at = -PEERS_TTL_S

    def holds(self, name: str) -> bool:
        return name in self.resident

    async def look_around(self, adapter: str) -> None:
        """Before routing a request for `adapter` this replica does not hold:
        which adapters the others hold, unless read in the last PEERS_TTL_S."""
        now = time.monotonic()
        if self.holds(adapter) or self._read_peers is None or now - self._peers_read_at < PEERS_TTL_S:
            return
        try:
            self._peers = await asyncio.to_thread(self._read_peers)
        except Exception as err:  # noqa: BLE001 - without the view, the replica loads the adapter itself
            logger.warning("reading which adapters other replicas hold failed: %r", err)
            self._peers = {}
        self._peers_read_at = now

    def serve_here(self, adapter: str) -> bool:
        return serve_here(adapter, self.resident, self._peers)

    def listed(self) -> list[str]:
        """Listed adapters, then the dynamic ones this replica holds (a store's
        whole content is not enumerated: it may hold thousands)."""
        return list(self.names.listed) + sorted(set(self.resident) - set(self.names.listed))

    def card(self, name: str) -> Any:
        """The /v1/models card of an adapter in `listed()`; AdapterNotFound for others."""
        if name not in self.names.listed and name not in self.resident:
            raise AdapterNotFound(f"The model `{name}` is not listed: it is an adapter of a dynamic source that "
                                  "this replica has not loaded; a request for it loads it.")
        return self._card(name)


async def load_into_vllm(models: Any, client: Any, name: str, path: str) -> None:
    """Registers adapter `name` with vLLM (`models`, its OpenAIServingModels)
    and loads its weights into the engine (`client`). One evicted before is
    registered still, and only loaded again."""
    known = models.lora_requests.get(name)
    try:
        if known is not None:
            await client.add_lora(known)
            return
        from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest

        result = await models.load_lora_adapter(LoadLoRAAdapterRequest(lora_name=name, lora_path=path))
    except Exception as err:
        raise AdapterRejected(f"adapter {name!r}: the engine cannot load it: {err}") from err
    if not isinstance(result, str):  # vLLM's ErrorResponse
        raise AdapterRejected(f"adapter {name!r}: the engine cannot load it: {result.error.message}")


async def evict_from_vllm(models: Any, client: Any, name: str) -> None:
    """Frees the adapter's weights in the engine; it stays registered, so a
    request already holding it loads it again rather than failing."""
    known = models.lora_requests.get(name)
    if known is not None:
        await client.remove_lora(known.lora_int_id)
