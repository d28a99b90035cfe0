"""The `shardserve` command."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Optional

from shardserve.api.crd import render_crd_yaml
from shardserve.api.engine_args import CATALOG_PATH
from shardserve.api.spec import ModelDeployment
from shardserve.api.validation import SpecError, check_servable_here, check_servable_in_cluster, load_file
from shardserve.bench.command import add_arguments as add_bench_arguments
from shardserve.builtin.tiny import build_tiny_model
from shardserve_operator.settings import add_arguments as add_operator_arguments

EXIT_INVALID = 2


def _load_or_exit(path: str, *, servable_here: bool = True) -> ModelDeployment:
    """The file's ModelDeployment, checked for `shardserve run` (`servable_here`) or for a cluster."""
    try:
        md = load_file(path)
        problems = check_servable_here(md) if servable_here else check_servable_in_cluster(md)
        if problems:
            raise SpecError(problems, path)
        return md
    except SpecError as err:
        print(f"shardserve: {err}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from shardserve.local.run import LocalOptions, run_local

    md = _load_or_exit(args.file)
    options = LocalOptions(host=args.host, port=args.port, num_cpus=args.num_cpus, verbose=args.verbose,
                           metrics_port=args.metrics_port, spec_file=args.file)
    return _exit_without_teardown(run_local(md, options))


def _exit_without_teardown(status: int) -> NoReturn:
    """Ends the process once `shardserve run` has stopped everything it started.

    Tearing the interpreter down after a run takes about 5 s, nearly all of
    it in the C destructors of what Ray, vLLM and torch loaded (measured:
    exit handlers 0.0 s, garbage collection 1 s, then nothing in Python).
    The exit handlers still run and the streams are flushed; only that
    teardown is skipped.
    """
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _cmd_status(args: argparse.Namespace) -> int:
    from shardserve.local.status import format_status, read_local_status

    try:
        rows = read_local_status(args.name)
    except ConnectionError as err:
        print(f"shardserve: no local deployment running ({err})", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    md = _load_or_exit(args.file, servable_here=not args.cluster)
    print(f"{args.file}: valid ModelDeployment {md.metadata.name!r}")
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    try:
        path = build_tiny_model(Path(args.dir))
    except FileExistsError:
        print(f"shardserve: {args.dir} exists and is not empty", file=sys.stderr)
        return 1
    print(path)
    return 0


def _cmd_engine_args(args: argparse.Namespace) -> int:
    from shardserve.serve.engine_catalog import build_catalog

    fresh = json.dumps(build_catalog(), indent=1, sort_keys=True) + "\n"
    if args.write:
        CATALOG_PATH.write_text(fresh)
        print(f"wrote {CATALOG_PATH}")
        return 0
    if CATALOG_PATH.read_text() != fresh:
        print(f"{CATALOG_PATH} differs from the installed vLLM; run: shardserve engine-args --write", file=sys.stderr)
        return 1
    print("engine argument catalog matches the installed vLLM")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    """Prints what the operator would create for the file, with the operator's settings."""
    from shardserve_operator.render import render_children, render_yaml
    from shardserve_operator.settings import OperatorSettings

    md = _load_or_exit(args.file, servable_here=False)
    settings = OperatorSettings.from_env(os.environ)
    sys.stdout.write(render_yaml(render_children(md, settings.render)))
    return 0


def _cmd_crd(args: argparse.Namespace) -> int:
    """Prints the ModelDeployment CRD; -o writes it, --check compares files with it."""
    fresh = render_crd_yaml()
    stale = [path for path in args.check if not Path(path).is_file() or Path(path).read_text() != fresh]
    for path in stale:
        print(f"shardserve: {path} differs from the CRD generated from the spec; "
              f"run: shardserve crd -o {path}", file=sys.stderr)
    for path in args.output:
        Path(path).write_text(fresh)
        print(f"wrote {path}", file=sys.stderr)
    if not args.check and not args.output:
        sys.stdout.write(fresh)
    return 1 if stale else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from shardserve.bench.command import run_from_args

    return run_from_args(args)


def _cmd_operator(args: argparse.Namespace) -> int:
    from shardserve_operator.main import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shardserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve a ModelDeployment file locally")
    run.add_argument("file")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=None, help="HTTP port (default spec.serving.port)")
    run.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for the local Ray")
    run.add_argument("--metrics-port", type=int, default=8080,
                     help="port of Ray's metrics agent, /metrics in Prometheus format (default 8080; 0: any free port)")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray's and vLLM's logs")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="replicas and queue of deployments started by `shardserve run`")
    status.add_argument("name", nargs="?", help="only this deployment")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_cmd_status)

    validate = sub.add_parser("validate", help="check a ModelDeployment file")
    validate.add_argument("file")
    validate.add_argument("--cluster", action="store_true",
                          help="check for a cluster only: accept what only a cluster does (replicas: 0 pauses)")
    validate.set_defaults(func=_cmd_validate)

    model = sub.add_parser("model", help="builtin models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    tiny = model_sub.add_parser("build-tiny", help="build the builtin tiny model into DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=_cmd_model)

    render = sub.add_parser("render", help="print, as YAML, every object the operator would create for a file")
    render.add_argument("file")
    render.set_defaults(func=_cmd_render)

    crd = sub.add_parser("crd", help="print the ModelDeployment CustomResourceDefinition, generated from the spec")
    crd.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                     help="write the CRD to FILE instead of printing it (repeatable)")
    crd.add_argument("--check", action="append", default=[], metavar="FILE",
                     help="exit 1 unless FILE holds exactly the generated CRD (repeatable)")
    crd.set_defaults(func=_cmd_crd)

    operator = sub.add_parser("operator", help="run the Kubernetes operator (reconciles ModelDeployments)")
    add_operator_arguments(operator)
    operator.set_defaults(func=_cmd_operator)

    bench = sub.add_parser("bench", help="load an OpenAI-compatible endpoint and report latency and throughput; "
                                          "--compare FILE sets bare vLLM beside shardserve")
    add_bench_arguments(bench)
    bench.set_defaults(func=_cmd_bench)

    engine_args = sub.add_parser("engine-args", help="check or regenerate the vLLM engine argument catalog")
    engine_args.add_argument("--write", action="store_true")
    engine_args.set_defaults(func=_cmd_engine_args)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
