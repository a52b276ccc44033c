"""``tfps-server``: flags and environment variables -> a running server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

_log = logging.getLogger("tfps_server")

ENV_PREFIX = "TFPS_"


def _env_default(flag: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper(), default)


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser; every flag also reads the environment variable TFPS_<FLAG>."""
    parser = argparse.ArgumentParser(
        prog="tfps-server",
        description="tfps parameter server: exact tf_keras OptimizerV2 updates over gRPC. "
        "Every flag can also be set by the environment variable TFPS_<FLAG> "
        "(for example TFPS_PORT=50052); a flag wins over its variable.",
    )

    def add(flag: str, default: str | None, help_text: str, **kwargs: object) -> None:
        parser.add_argument(flag, default=_env_default(flag, default), help=help_text, **kwargs)  # type: ignore[arg-type]

    add("--host", "127.0.0.1", "interface to listen on (0.0.0.0 for all); default %(default)s")
    add("--port", "50051", "gRPC port (0 picks a free one); default %(default)s", type=int)
    add(
        "--device",
        "auto",
        "TensorFlow device for variables and slots, e.g. /GPU:0 or /CPU:0; "
        "auto picks the first GPU, else the CPU; default %(default)s",
    )
    add(
        "--optimizer",
        None,
        "Keras config JSON of an optimizer created at start under the name 'default', "
        'e.g. \'{"class_name": "Adam", "config": {"learning_rate": 0.001}}\'',
    )
    add(
        "--checkpoint-dir",
        None,
        "directory for checkpoints (accepted and created; periodic saving is not implemented yet)",
    )
    add("--max-workers", "64", "threads serving RPCs; default %(default)s", type=int)
    add(
        "--grace-seconds",
        "10",
        "time in-flight RPCs get to finish on SIGTERM; default %(default)s",
        type=float,
    )
    add("--log-level", "INFO", "DEBUG, INFO, WARNING or ERROR; default %(default)s")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until SIGTERM or SIGINT; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfps_server.errors import ServerError
    from tfps_server.server import create_server
    from tfps_server.store import Store

    try:
        store = Store(args.device)
        if args.optimizer:
            store.create_optimizer("default", args.optimizer)
    except ServerError as error:
        _log.error("cannot start: %s", error.message)
        return 2
    if args.checkpoint_dir:
        Path(args.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    running = create_server(store, f"{args.host}:{args.port}", max_workers=args.max_workers)
    _log.info(
        "tfps-server listening on %s:%d, device %s, config %s",
        args.host,
        running.port,
        store.device,
        json.dumps(vars(args)),
    )
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        _log.info("received %s, shutting down", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    stopping.wait()
    running.stop(args.grace_seconds)
    _log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
