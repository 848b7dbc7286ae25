"""`distlm-node`: lend this machine to a DistLM cluster.

    distlm-node --coordinator-address HOST:PORT [--gpu | --cpu] --username U

as the seeds' `worker.py --coordinator-address <ip>:5000 [--gpu|--cpu]`, with the gateway
as the coordinator. Secrets come from flags or the environment and are never printed."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from agent.credentials import default_credential_file
from agent.errors import AgentError, NodeBannedError
from agent.gateway_client import gateway_url
from agent.loop import AgentConfig, run_agent
from agent.machine import detect_gpus, detect_resources

log = logging.getLogger("distlm.agent")

ENV_USERNAME = "DISTLM_NODE_USERNAME"
ENV_PASSWORD = "DISTLM_NODE_PASSWORD"
ENV_TOKEN = "DISTLM_NODE_TOKEN"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _count(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distlm-node",
        description="Register this machine with a DistLM gateway and, once approved, run "
        "the jobs placed on it on a Ray of its own (or of a trusted pool), sending heartbeats "
        "until stopped (Ctrl-C).",
        epilog=f"Credentials may come from {ENV_USERNAME}, {ENV_PASSWORD} or {ENV_TOKEN}; "
        "after the first run the stored node credential is enough. Exit status: 0 stopped, "
        "1 error, 2 bad usage, 3 node banned, 4 approval timed out.",
    )
    parser.add_argument(
        "--coordinator-address",
        "--gateway",
        required=True,
        metavar="HOST:PORT",
        help="the gateway: HOST:PORT, HOST (port 8000) or an http(s):// URL",
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--gpu", action="store_true", help="offer GPUs (at least one required)")
    kind.add_argument("--cpu", action="store_true", help="offer no GPUs, even if present")

    login = parser.add_argument_group("login (the node owner's account)")
    login.add_argument("--username", help=f"default: ${ENV_USERNAME}")
    login.add_argument(
        "--password", help=f"default: ${ENV_PASSWORD} or a prompt (a flag shows in ps)"
    )
    login.add_argument("--token", help=f"an access token instead; default: ${ENV_TOKEN}")

    machine = parser.add_argument_group("this machine")
    machine.add_argument("--hostname", default=None, help="node name (default: this hostname)")
    machine.add_argument("--cpus", type=_positive_float, help="CPU cores (default: detected)")
    machine.add_argument("--memory-gb", type=_positive_float, help="memory (default: detected)")
    machine.add_argument("--gpus", type=_count(0), help="GPUs (default: detected)")
    machine.add_argument(
        "--credential-file",
        type=Path,
        help="where the node id and credential are kept (default: ~/.distlm/node-HOST.json)",
    )

    run = parser.add_argument_group("running")
    run.add_argument(
        "--approval-timeout",
        type=_non_negative_float,
        metavar="S",
        help="give up if not approved within S seconds (default: wait)",
    )
    run.add_argument(
        "--approval-poll", type=_positive_float, default=5.0, metavar="S", help=argparse.SUPPRESS
    )
    run.add_argument(
        "--heartbeat-interval",
        type=_positive_float,
        metavar="S",
        help="seconds between heartbeats (default: what the gateway asks for)",
    )
    run.add_argument("--heartbeats", type=_count(1), metavar="N", help="exit after N heartbeats")
    run.add_argument("--once", action="store_true", help="send one heartbeat, then exit")
    run.add_argument(
        "--no-ray", action="store_true", help="register and heartbeat without a Ray worker"
    )
    run.add_argument(
        "--object-store-mb", type=_count(75), metavar="MB", help="Ray object store size"
    )
    run.add_argument(
        "--warm-workers",
        type=_count(0),
        metavar="N",
        help="processes kept with torch imported on this machine (in the node's own Ray or "
        "its trusted pool), so that a job's workers start at once (default: one per core, at "
        "most 4; each holds ~250 MB; 0: none)",
    )
    run.add_argument("--ray-log-file", type=Path, help="the Ray worker's output")
    run.add_argument(
        "--node-address",
        metavar="IP",
        help="the address this node's Ray serves at, which the other nodes of a multi-node "
        "job must reach (default: this machine's address on its route to the gateway)",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        metavar="PATH",
        help="where this node keeps its jobs' files (default: beside the credential file)",
    )
    run.add_argument(
        "--single-node-only",
        action="store_true",
        help="take only jobs that fit on this node alone: it never shares a Ray cluster "
        "with another machine (whose code could then reach this one)",
    )
    run.add_argument(
        "--data-root",
        default="",
        metavar="PATH",
        help="this node's local datasets, for jobs that name a local path",
    )
    run.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join this trusted pool (your own Ray cluster, whose members all trust each "
        "other) instead of starting a Ray of the node's own: jobs placed on it run there, and "
        "a multi-node job only with nodes of the same pool",
    )
    run.add_argument(
        "--ray-auth-token-file",
        type=Path,
        metavar="PATH",
        help="the pool's Ray auth token, if it uses Ray token authentication",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every heartbeat")
    return parser


def _resolve_gpus(args: argparse.Namespace) -> int:
    if args.cpu:
        if args.gpus:
            raise ValueError("--cpu offers no GPUs; drop --gpus or use --gpu")
        return 0
    gpus = args.gpus if args.gpus is not None else detect_gpus()
    if args.gpu and gpus < 1:
        raise ValueError("--gpu: no GPU detected on this machine (declare them with --gpus N)")
    return gpus


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """Flags win over the environment; raises ValueError for bad usage."""
    environ = os.environ if environ is None else environ
    hostname = args.hostname or socket.gethostname()
    credential_file = (args.credential_file or default_credential_file(hostname)).expanduser()
    username = args.username or environ.get(ENV_USERNAME) or None
    password = args.password or environ.get(ENV_PASSWORD) or None
    token = args.token or environ.get(ENV_TOKEN) or None
    if username and not password and not token and not credential_file.exists():
        if not sys.stdin.isatty():
            raise ValueError(f"--username needs --password (or ${ENV_PASSWORD})")
        password = getpass.getpass(f"password for {username}: ")
    heartbeats = 1 if args.once else args.heartbeats
    resources = detect_resources(cpus=args.cpus, memory_gb=args.memory_gb, gpus=_resolve_gpus(args))
    return AgentConfig(
        gateway_url=gateway_url(args.coordinator_address),
        hostname=hostname,
        resources=resources,
        credential_file=credential_file,
        username=username,
        password=password,
        token=token,
        start_ray=not args.no_ray,
        approval_timeout_s=args.approval_timeout,
        approval_poll_s=args.approval_poll,
        heartbeat_interval_s=args.heartbeat_interval,
        max_heartbeats=heartbeats,
        object_store_mb=args.object_store_mb,
        warm_workers=args.warm_workers,
        ray_log_file=args.ray_log_file,
        node_address=args.node_address,
        work_dir=args.work_dir.expanduser() if args.work_dir else None,
        data_root=args.data_root,
        single_node_only=args.single_node_only,
        ray_address=args.ray_address or "",
        ray_auth_token_file=args.ray_auth_token_file.expanduser()
        if args.ray_auth_token_file
        else None,
    )


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM ask the agent to stop cleanly; a second one stops it at once.
    Handlers can only be installed from the main thread; elsewhere (tests) this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping (again to force)", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _logging_to_stderr(verbose: bool) -> Iterator[None]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s distlm-node %(levelname)s %(message)s"))
    previous_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with _logging_to_stderr(args.verbose):
        try:
            config = config_from_args(args)
        except ValueError as exc:
            parser.error(str(exc))
        stop = threading.Event()
        with stop_on_signals(stop):
            try:
                result = run_agent(config, stop=stop)
            except NodeBannedError as exc:
                log.error("%s; the Ray worker was stopped. Ask an admin why.", exc.detail)
                return exc.exit_code
            except AgentError as exc:
                log.error("%s", exc)
                return exc.exit_code
            except KeyboardInterrupt:
                log.error("forced to stop")
                return 130
        log.info("node %s stopped after %s heartbeats", result.node_id, result.heartbeats)
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
