"""Every name that crosses a process, image or release boundary, in one place.

Renaming a module that one of these paths names breaks what was written
elsewhere: a RayService in a cluster, an LLMConfig in Serve's controller,
an environment a Ray process inherits. Tests import each path and check
what it names (tests/test_import_rules.py). vLLM's plugin entry points are
the other such names; they live in pyproject.toml.
"""

from __future__ import annotations

# Written into RayServices by the operator (serveConfigV2, pod env): kept
# stable across releases, so they name small forwarding modules.
APP_IMPORT_PATH = "shardserve.app:build_app"
POLICY_CLASS = "shardserve.autoscaling:QueueDepthPolicy"
SPAN_PROCESSORS_IMPORT_PATH = "shardserve.tracing:otlp_span_processors"

# Named in the LLMConfig the application builds inside Serve's controller:
# marks the end of the model download in a replica's start.
COLD_START_CALLBACK = "shardserve.serve.telemetry.cold_start:ColdStartCallback"

# The Serve deployment of the model replicas, in every application.
LLM_DEPLOYMENT = "llm"
# Where the operator mounts a pvc:// claim inside Ray pods.
PVC_MOUNT_ROOT = "/mnt/models"
# Where the operator mounts a spec.chat.template.configMap in Ray worker pods.
CHAT_TEMPLATE_DIR = "/etc/shardserve/chat-template"

# Ray Serve switches every Ray process of a deployment reads, set before Ray
# starts (`shardserve run`) or on the Ray pods (the rendered RayService).
# HAProxy on each node forwards requests straight to the model replicas' own
# HTTP servers ("direct ingress"). Its buffers hold headers up to 64 KiB, so
# oversized headers (over 32 KiB) get the replica's OpenAI-shaped 431 rather
# than HAProxy's HTML 400 (which only headers past 64 KiB still get).
RAY_SERVE_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_TUNE_BUFSIZE": str(64 * 1024)}

# API keys, read in each replica's process: inline (local runs) or a file or
# mounted Secret directory (the operator sets the latter).
KEYS_ENV = "SHARDSERVE_API_KEYS"
KEYS_FILE_ENV = "SHARDSERVE_API_KEYS_FILE"

# The file a replica hands its vLLM engine processes for the weight-load times.
WEIGHT_LOAD_FILE_ENV = "SHARDSERVE_WEIGHT_LOAD_FILE"

# Ray's internal key-value store: what replicas and the controller publish
# and `shardserve status` reads.
KV_NAMESPACE = "shardserve"


def decision_key(app: str, deployment: str) -> str:
    """The latest autoscaling decision of one deployment."""
    return f"autoscaling/{app}/{deployment}"


def cold_start_key(app: str, deployment: str) -> str:
    """The phases of one deployment's latest replica start."""
    return f"coldstart/{app}/{deployment}"


def adapters_key(app: str, deployment: str, replica: str = "") -> str:
    """The LoRA adapters one replica holds (a prefix of all replicas' keys when `replica` is empty)."""
    return f"adapters/{app}/{deployment}/{replica}"
