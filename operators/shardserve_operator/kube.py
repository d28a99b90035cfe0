"""The HTTP door to the API server: JSON dicts in and out over the official client.

The generated typed clients would turn RayServices and Services into
different model classes; children are compared and hashed as plain dicts, so
requests go through the official ApiClient (auth, TLS, connection pool) with
raw JSON. Only observe.py reads and only apply.py writes what the operator
reconciles; leader.py writes its own Lease. A refusal leaves as a typed
ApiError (api_errors.py): nothing above this module sees the client's own
exception or compares status numbers.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Optional

import urllib3.exceptions
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from shardserve_operator.api_errors import ApiNotFound, ApiTransportError, build_api_error
from shardserve_operator.kinds import Kind
from shardserve_operator.metrics import OperatorMetrics

REQUEST_TIMEOUT = (5, 30)  # seconds: connect, read

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
# Every write of a child asks the API server to refuse fields its schema does
# not know instead of dropping them (the default, Warn, prunes them and only
# sends a warning header): an older KubeRay CRD then fails the write loudly.
STRICT = {"fieldValidation": "Strict"}


def _plural_of(path: str) -> str:
    """'/api/v1/namespaces/ns/services/x/status' -> 'services'."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts[:-2]:
        return parts[parts.index("namespaces") + 2]
    return parts[-1] if parts else ""


def compute_request_kind(method: str, path: str) -> tuple[str, str]:
    """(Kubernetes verb, resource[/subresource]) of a request, as RBAC and the API server's metrics name them.

    'GET /api/v1/namespaces/ns/services' -> ('list', 'services');
    'PATCH /apis/g/v/namespaces/ns/things/x/status' -> ('patch', 'things/status').
    """
    parts = path.split("?")[0].strip("/").split("/")
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if len(rest) > 2 and rest[0] == "namespaces":
        rest = rest[2:]
    resource = "/".join(rest[:1] + rest[2:3])
    named = len(rest) > 1
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection"}.get(method.upper(), method.lower())
    return verb, resource


def build_api_client(server: Optional[str] = None) -> client.ApiClient:
    """An ApiClient for `server` (no credentials), else in-cluster config, else ~/.kube/config."""
    from kubernetes import config

    configuration = client.Configuration()
    if server:
        configuration.host = server.rstrip("/")
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class Kube:
    """Thread-safe JSON requests; counts calls per (method, plural) for logs and tests, and in the metrics."""

    def __init__(self, api_client: client.ApiClient, metrics: Optional[OperatorMetrics] = None):
        self.api_client = api_client
        self.metrics = metrics or OperatorMetrics()
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        body: Optional[Any] = None,
        *,
        content_type: str = JSON,
        query: Optional[dict[str, str]] = None,
    ) -> dict[str, Any]:
        """Sends one request; raises the ApiError subclass of the answer (ApiTransportError without one),
        naming the request ("GET /api/v1/namespaces/default/services/tiny")."""
        headers = {"Accept": JSON, "Content-Type": content_type}
        method_, url, headers, body_, post = self.api_client.param_serialize(
            method, path, query_params=list((query or {}).items()) or None,
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        with self._lock:
            self.calls[(method, _plural_of(path))] += 1
        verb, resource = compute_request_kind(method, path)
        started = time.monotonic()
        try:
            response = self.api_client.call_api(method_, url, headers, body_, post, _request_timeout=REQUEST_TIMEOUT)
            response.read()
        except ApiException as err:  # the client's own: status 0 for a TLS failure, else an answer it read
            self.metrics.observe_api_request(verb, resource, str(err.status or "error"), time.monotonic() - started)
            if not err.status:
                raise ApiTransportError(str(err.reason or err)).during(f"{method} {path}") from err
            raise build_api_error(err.status, err.reason or "", err.body or "", err.headers).during(
                f"{method} {path}") from err
        except (urllib3.exceptions.HTTPError, OSError) as err:  # no HTTP answer: refused, reset, timed out
            self.metrics.observe_api_request(verb, resource, "error", time.monotonic() - started)
            raise ApiTransportError(f"{type(err).__name__}: {err}").during(f"{method} {path}") from err
        self.metrics.observe_api_request(verb, resource, str(response.status), time.monotonic() - started)
        if not 200 <= response.status <= 299:
            raise build_api_error(response.status, response.reason or "",
                                  (response.data or b"").decode("utf-8", "replace"), response.headers).during(
                f"{method} {path}")
        return json.loads(response.data) if response.data else {}

    def get(self, kind: Kind, namespace: Optional[str], name: str) -> Optional[dict[str, Any]]:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", kind.path(namespace or "", name))
        except ApiNotFound:
            return None
