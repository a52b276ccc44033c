"""``tfps-server``: flags and environment variables -> a running server."""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tfps_client import tf_config
from tfps_client.wire.reasons import Reason
from tfps_server import __version__, limits, logs, stderr_relay
from tfps_server.errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from tfps_server.app import RunningServer
    from tfps_server.auth import TokenFile
    from tfps_server.checkpoints import Checkpointer
    from tfps_server.tls import TlsFiles

_log = logging.getLogger("tfps_server")

ENV_PREFIX = "TFPS_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
ALL_INTERFACES = "0.0.0.0"
"""Where a ``ps`` task of ``TF_CONFIG`` listens: its address names the pod, not an interface."""

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _env_variable(flag: str) -> str:
    """The environment variable of a flag: ``--metrics-port`` -> ``TFPS_METRICS_PORT``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _env_default(flag: str, default: str | None) -> str | None:
    return os.environ.get(_env_variable(flag), default)


class _Parser(argparse.ArgumentParser):
    """An argument parser that checks the values from the environment as it checks the
    command line's (argparse leaves defaults out of its ``choices`` check), and whose errors
    about a value from the environment name the variable and its value."""

    _given: Sequence[str] = ()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            if action.choices is not None and value is not None and value not in action.choices:
                self.error(
                    f"argument {action.option_strings[0]}: invalid choice: {value!r} "
                    f"(choose from {', '.join(map(str, action.choices))})"
                )
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        flag = re.match(r"argument (--[\w-]+)", message)
        if flag is not None:
            name = flag[1]
            given = any(arg == name or arg.startswith(f"{name}=") for arg in self._given)
            variable = _env_variable(name)
            if not given and variable in os.environ:
                message += f" (from the environment: {variable}={os.environ[variable]!r})"
        super().error(message)


def _boolean(text: str) -> bool:
    """Parses a boolean flag or environment value (true/false, 1/0, yes/no, on/off)."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def _optimizer_config(text: str) -> str:
    """Checks that an ``--optimizer`` value is a Keras optimizer config in JSON (an object
    with a string ``class_name``) before TensorFlow loads; the server checks the rest."""
    try:
        config = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected JSON, received {text!r} ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise argparse.ArgumentTypeError(
            "expected a Keras optimizer config, a JSON object with a string 'class_name' such "
            f'as {{"class_name": "Adam", "config": {{}}}}, received {text!r}'
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser; every flag also reads the environment variable TFPS_<FLAG>."""
    parser = _Parser(
        prog="tfps-server",
        description="tfps parameter server: exact tf_keras OptimizerV2 updates over gRPC. "
        "Every flag can also be set by the environment variable TFPS_<FLAG> "
        "(for example TFPS_PORT=50052); a flag wins over its variable.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    def add(flag: str, default: str | None, help_text: str, **kwargs: object) -> None:
        parser.add_argument(flag, default=_env_default(flag, default), help=help_text, **kwargs)  # type: ignore[arg-type]

    add(
        "--host",
        None,
        f"interface to listen on (0.0.0.0 for all); default {DEFAULT_HOST}, "
        f"or {ALL_INTERFACES} when TF_CONFIG names this process a ps task",
    )
    add(
        "--port",
        None,
        f"gRPC port (0 picks a free one); default {DEFAULT_PORT}, "
        "or the port of this ps task's address in TF_CONFIG",
        type=int,
    )
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
        type=_optimizer_config,
    )
    add("--checkpoint-dir", None, "directory for checkpoints; none: checkpoints are off")
    add(
        "--checkpoint-every-seconds",
        "600",
        "seconds between periodic checkpoints; 0 disables; default %(default)s",
        type=float,
    )
    add(
        "--checkpoint-every-steps",
        "0",
        "optimizer iterations (summed over optimizers) between checkpoints; 0 disables; "
        "default %(default)s",
        type=int,
    )
    add("--keep-checkpoints", "5", "newest checkpoints kept; default %(default)s", type=int)
    add(
        "--restore",
        "latest",
        "checkpoint to start from: latest (in --checkpoint-dir, if any), an id, a path "
        "prefix, or none; default %(default)s",
    )
    add(
        "--request-window",
        "100000",
        "push request ids remembered for exactly-once retries; default %(default)s",
        type=int,
    )
    add(
        "--max-workers",
        "64",
        "threads for calls that change the state (a push waiting for its sync step holds "
        "one); default %(default)s",
        type=int,
    )
    limits.add_flags(add)
    add(
        "--grace-seconds",
        "10",
        "time in-flight RPCs get to finish on SIGTERM; default %(default)s",
        type=float,
    )
    add(
        "--metrics-port",
        "9464",
        "port serving Prometheus metrics at /metrics over HTTP; 0 disables; default %(default)s",
        type=int,
    )
    add("--metrics-host", None, "interface for the metrics port; default: the gRPC host's")
    add(
        "--metrics-variable-labels",
        "false",
        "label the per-variable byte gauges by variable name (one series per variable: "
        "mind the cardinality); default %(default)s",
        type=_boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
    )
    add("--tls-cert", None, "PEM certificate (chain) to serve gRPC over TLS; needs --tls-key")
    add("--tls-key", None, "PEM private key of --tls-cert (not encrypted)")
    add(
        "--tls-client-ca",
        None,
        "PEM CA bundle: clients must present a certificate it signed (mutual TLS)",
    )
    add(
        "--metrics-tls",
        "false",
        "serve /metrics over HTTPS with the --tls-* files (and their client CA); "
        "default %(default)s",
        type=_boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
    )
    add(
        "--auth-tokens-file",
        None,
        "file of 'ROLE TOKEN' lines (roles: reader, worker, admin); calls must carry "
        "'authorization: Bearer TOKEN'; re-read when it changes and on SIGHUP; none: the server "
        "is open",
    )
    add(
        "--reflection",
        "true",
        "answer gRPC server reflection (health is always answered); default %(default)s",
        type=_boolean,
        nargs="?",
        const=True,
        metavar="BOOL",
    )
    add(
        "--log-level",
        "INFO",
        f"one of {', '.join(LOG_LEVELS)} (any case); default %(default)s",
        type=str.upper,
        choices=LOG_LEVELS,
    )
    add(
        "--log-format",
        "text",
        "text (human-readable) or json (one object per line); default %(default)s",
        choices=logs.LOG_FORMATS,
    )
    return parser


def listen_address(
    host: str | None, port: int | None, config: tf_config.TFConfig | None
) -> tuple[str, int]:
    """Returns the host and port to listen on.

    A host or port given by flag or environment wins. Otherwise, when ``TF_CONFIG``
    has a ``ps`` job, this process must be one of its tasks and listens on all
    interfaces at the port of its own address there; else the defaults apply.

    Raises:
        ValueError: ``TF_CONFIG`` has a ``ps`` job but does not make this process one
            of its tasks, or the task's address has no port.
    """
    if config is None or tf_config.PS_JOB not in config.cluster:
        return host or DEFAULT_HOST, DEFAULT_PORT if port is None else port
    if config.task_type != tf_config.PS_JOB:
        raise ValueError(
            f"TF_CONFIG: expected task type {tf_config.PS_JOB!r} for a tfps server, "
            f"received {config.task_type!r}"
        )
    address = config.task_address()
    _, _, own_port = address.rpartition(":")
    if not own_port.isdigit():
        raise ValueError(f"TF_CONFIG: expected host:port for this ps task, received {address!r}")
    return host or ALL_INTERFACES, int(own_port) if port is None else port


def serve_until_signalled(running: RunningServer, grace_seconds: float) -> int:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully; returns the exit code.

    Shutdown is :meth:`RunningServer.stop`: health NOT_SERVING, no new RPCs,
    in-flight ones finish within ``grace_seconds``, then the shutdown hooks run
    (the place for a final checkpoint). A second signal ends the process at once.
    SIGHUP re-reads the tokens file and the TLS certificates.
    """
    received: list[int] = []
    stopping = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        received.append(signum)
        for other in (signal.SIGTERM, signal.SIGINT):
            signal.signal(other, signal.SIG_DFL)
        stopping.set()

    def reload(signum: int, frame: object) -> None:
        threading.Thread(target=_reload, args=(running,), name="tfps-reload").start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload)
    if sys.stderr is not None:  # None when started with descriptor 2 closed (2>&-)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: dump stacks
    stopping.wait()
    _log.info(
        "received %s: shutting down, in-flight RPCs get %.1f s",
        signal.Signals(received[0]).name,
        grace_seconds,
    )
    try:
        running.stop(grace_seconds)
    except Exception:
        _log.error("shutdown failed")
        return 1
    _log.info("stopped")
    return 0


def _reload(running: RunningServer) -> None:
    if running.reload():
        _log.info("SIGHUP: reloaded the tokens file and TLS certificates")
    else:
        _log.error("SIGHUP: a file did not reload (see above); the old one still serves")


def security(args: argparse.Namespace) -> tuple[TokenFile | None, TlsFiles | None]:
    """Returns the tokens and TLS files the flags name, and logs how the server is exposed.

    Raises:
        ValueError: a file is unreadable or malformed, or --tls-cert and --tls-key
            are not given together.
    """
    from tfps_server.auth import TokenFile
    from tfps_server.tls import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together; received only one")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    if args.metrics_tls and not args.tls_cert:
        raise ValueError("--metrics-tls needs --tls-cert and --tls-key")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    tokens = TokenFile(args.auth_tokens_file) if args.auth_tokens_file else None
    if tokens is None:
        _log.warning(
            "no --auth-tokens-file: the server is OPEN, anyone who reaches %s:%s can read "
            "and overwrite the model; see SECURITY.md",
            args.host,
            args.port,
        )
    else:
        _log.info("tokens: %s", tokens.summary())
    if tls is None:
        _log.warning("no --tls-cert: gRPC is plaintext (tokens and tensors travel unencrypted)")
    return tokens, tls


def restore(checkpointer: Checkpointer | None, which: str) -> None:
    """Restores the checkpoint ``--restore`` names, before the server reports SERVING.

    ``latest`` with no checkpoint yet starts empty; an unreadable checkpoint is
    an error, never skipped silently.

    Raises:
        ServerError: the checkpoint is missing or unreadable, or there is no directory.
    """
    if which.lower() == "none":
        return
    if checkpointer is None:
        if which == "latest":
            return
        raise FailedPrecondition(
            f"--restore {which}: needs --checkpoint-dir", Reason.NO_CHECKPOINT_DIR
        )
    try:
        info = checkpointer.restore(which)
    except NotFound as error:
        if which != "latest" or error.reason != Reason.NO_CHECKPOINT:
            raise
        _log.info("no checkpoint in %s: starting empty", checkpointer.directory)
        return
    _log.info("restored checkpoint %d from %s", info.id, info.path)


def check_port_free(host: str, port: int) -> None:
    """Refuses a port another process listens on, before the slow start (TensorFlow).

    The servers bind without SO_REUSEPORT, so a taken port would fail later
    anyway; this says so at once. Port 0 (any free port) is always free.

    Raises:
        OSError: the port is taken, or the host cannot be bound.
    """
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                probe.bind(address)
            except OSError as error:
                raise OSError(
                    error.errno, f"{host}:{port} is in use by another process ({error.strerror})"
                ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the server until SIGTERM or SIGINT; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.set_tensorflow_log_level(args.log_level)
    relay = stderr_relay.start(args.log_level, args.log_format)
    if relay is not None:
        atexit.register(relay.close)
    try:
        logs.configure(args.log_level, args.log_format, relay.stream if relay else None)
    except ValueError as error:
        parser.error(str(error))
    if relay is None:
        _log.warning("the stderr relay did not start: native output is not logged as records")
    try:
        args.host, args.port = listen_address(args.host, args.port, tf_config.load())
    except ValueError as error:
        _log.error("cannot start: %s", error)
        return 2
    args.metrics_host = args.metrics_host or args.host
    try:
        check_port_free(args.host, args.port)
        check_port_free(args.metrics_host, args.metrics_port)
    except OSError as error:
        _log.error("cannot start: %s", error.strerror or error)
        return 2

    from tfps_server.app import create_server
    from tfps_server.checkpoints import Checkpointer, PeriodicSaver
    from tfps_server.errors import ServerError
    from tfps_server.registry import Registry

    try:
        tokens, tls_files = security(args)
    except (ValueError, OSError) as error:
        _log.error("cannot start: %s", error)
        return 2
    from tfps_server.tls import ServerTls

    try:
        registry = Registry(
            args.device, request_window=args.request_window, limits=limits.from_args(args)
        )
        checkpointer = (
            Checkpointer(registry, args.checkpoint_dir, keep=args.keep_checkpoints)
            if args.checkpoint_dir
            else None
        )
        running = create_server(
            registry,
            f"{args.host}:{args.port}",
            max_workers=args.max_workers,
            metrics_address=f"{args.metrics_host}:{args.metrics_port}"
            if args.metrics_port
            else None,
            metrics_variable_labels=args.metrics_variable_labels,
            checkpointer=checkpointer,
            serving=False,
            tokens=tokens,
            tls=ServerTls(tls_files) if tls_files is not None else None,
            reflection=args.reflection,
            metrics_tls=tls_files if args.metrics_tls else None,
        )
    except (ServerError, RuntimeError, ValueError, OSError) as error:
        _log.error("cannot start: %s", getattr(error, "message", error))
        return 2
    try:
        restore(checkpointer, args.restore)
        if args.optimizer:
            registry.create_optimizer("default", args.optimizer)
    except ServerError as error:
        _log.error("cannot start: %s", error.message)
        running.stop(0)
        return 2
    if checkpointer is not None:
        saver = PeriodicSaver(
            checkpointer, args.checkpoint_every_seconds, args.checkpoint_every_steps
        )
        saver.start()
        running.add_shutdown_hook(saver.stop)
        running.add_shutdown_hook(checkpointer.save)
    running.set_serving(True)
    _log.info("effective configuration", extra={"config": logs.redacted(vars(args))})
    _log.info(
        "tfps-server listening on %s:%d, device %s, metrics %s, version %s",
        args.host,
        running.port,
        registry.device,
        f"{'https' if args.metrics_tls else 'http'}://{args.metrics_host}:"
        f"{running.metrics_port}/metrics"
        if running.metrics_port
        else "off",
        __version__,
    )
    return serve_until_signalled(running, args.grace_seconds)


if __name__ == "__main__":
    sys.exit(main())
