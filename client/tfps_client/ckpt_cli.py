"""tfps-ckpt: list, save, restore, download and inspect tfps checkpoints from a shell.

Times are UTC everywhere. The server is --server, else the environment variable
TFPS_SERVER, else 127.0.0.1:50051; the token is --token, else TFPS_TOKEN.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence

from tfps_client import __version__
from tfps_client.checkpoint_reader import open_checkpoint
from tfps_client.client import Client
from tfps_client.errors import TfpsError
from tfps_client.transport import TOKEN_ENVIRONMENT_VARIABLE, tls_credentials
from tfps_client.types import CheckpointInfo

SERVER_ENVIRONMENT_VARIABLE = "TFPS_SERVER"
"""Where ``--server`` defaults from."""

DEFAULT_SERVER = "127.0.0.1:50051"


def _utc(timestamp: float) -> str:
    """A Unix time as ISO 8601 in UTC, to the second: ``2026-11-24T10:30:00Z``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(info: CheckpointInfo) -> str:
    iterations = ", ".join(f"{name}={it}" for name, it in sorted(info.iterations.items()))
    group = f"  group: {info.group}" if info.group else ""
    return (
        f"{info.id:>6}  {_utc(info.saved_at)}  {info.size_bytes:>12}  "
        f"{len(info.variables):>4} variables  iterations: {iterations}{group}"
    )


def _as_json(info: CheckpointInfo) -> dict[str, object]:
    """A checkpoint as ``ls --json`` prints it."""
    return {
        "id": info.id,
        "path": info.path,
        "saved_at": _utc(info.saved_at),
        "size_bytes": info.size_bytes,
        "iterations": info.iterations,
        "group": info.group,
        "variables": [
            {
                "name": v.name,
                "shape": list(v.shape),
                "dtype": str(v.dtype),
                "optimizer": v.optimizer,
            }
            for v in info.variables
        ],
    }


def _list(client: Client, as_json: bool) -> None:
    checkpoints = client.list_checkpoints()
    if as_json:
        print(json.dumps([_as_json(info) for info in checkpoints], indent=2))
    elif not checkpoints:
        print(f"no checkpoints on {client.address}")
    else:
        for info in checkpoints:
            print(_describe(info))


def _inspect(path: str) -> None:
    try:
        opened = open_checkpoint(path)
    except FileNotFoundError as error:
        raise SystemExit(f"tfps-ckpt inspect: {error}") from None
    except ImportError:
        raise SystemExit(
            "tfps-ckpt inspect reads TensorFlow checkpoints: install tensorflow"
        ) from None
    metadata = opened.metadata
    print(f"checkpoint {opened.description}, saved {_utc(metadata.saved_at)}")
    for optimizer in metadata.optimizers:
        print(
            f"optimizer {optimizer.name}: {json.dumps(optimizer.config)} "
            f"{json.dumps(optimizer.options)} iterations={optimizer.iterations}"
        )
    for variable in metadata.variables:
        print(
            f"variable {variable.name}: {variable.dtype}{list(variable.shape)} "
            f"-> {variable.optimizer}"
        )
    for key, shape in opened.stored():
        print(f"  {key} {shape}")


def _add_connection_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--server",
        default=os.environ.get(SERVER_ENVIRONMENT_VARIABLE, DEFAULT_SERVER),
        help=f"host:port of the server, or the shards' comma-separated in shard order; "
        f"${SERVER_ENVIRONMENT_VARIABLE} sets the default",
    )
    command.add_argument("--timeout", type=float, default=600.0, help="seconds per call")
    command.add_argument(
        "--token",
        default=None,
        help=f"the token of a role allowed the command (default: ${TOKEN_ENVIRONMENT_VARIABLE}, "
        "which unlike this flag no other user can see in the process list)",
    )
    command.add_argument(
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system's root certificates unless --tls-ca is "
        "given (implied by the other --tls-* flags)",
    )
    command.add_argument("--tls-ca", default=None, help="PEM file of the server's CA")
    command.add_argument(
        "--tls-cert", default=None, help="PEM file of this client's certificate (mutual TLS)"
    )
    command.add_argument("--tls-key", default=None, help="PEM file of --tls-cert's private key")


def _connect(args: argparse.Namespace) -> Client:
    """Returns a client to the server the arguments name, with their token and TLS files."""
    tls = args.tls or any(path is not None for path in (args.tls_ca, args.tls_cert, args.tls_key))
    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    shards = args.server.split(",")
    return Client(
        shards if len(shards) > 1 else args.server,
        timeout=args.timeout,
        credentials=credentials,
        token=args.token,
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines, and shows each flag's default when it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of ``tfps-ckpt``."""
    parser = argparse.ArgumentParser(
        prog="tfps-ckpt", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("ls", "list the server's checkpoints"),
        ("save", "make the server write a checkpoint now (admin)"),
        ("restore", "replace the server's state with a checkpoint (admin)"),
        ("download", "download a checkpoint, verifying sizes and SHA-256"),
    ]:
        command = commands.add_parser(
            name, help=text, description=text, formatter_class=_HelpFormatter
        )
        _add_connection_arguments(command)
        if name == "ls":
            command.add_argument("--json", action="store_true", help="print JSON")
        if name in ("restore", "download"):
            command.add_argument(
                "--id", type=int, default=None, help="checkpoint id; none for the latest"
            )
        if name == "download":
            command.add_argument("dest", help="local directory for the files")
    text = "print a local checkpoint's contents (needs TensorFlow)"
    inspect = commands.add_parser(
        "inspect", help=text, description=text, formatter_class=_HelpFormatter
    )
    inspect.add_argument("path", help="checkpoint path prefix, or a directory for its latest")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``tfps-ckpt``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "inspect":
        _inspect(args.path)
        return 0
    try:
        with _connect(args) as client:
            if args.command == "ls":
                _list(client, args.json)
            elif args.command == "save":
                print(_describe(client.save_checkpoint()))
            elif args.command == "restore":
                print(_describe(client.restore_checkpoint(args.id)))
            else:
                print(client.download_checkpoint(args.id, args.dest))
    except (TfpsError, OSError, ValueError) as error:
        print(f"tfps-ckpt {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
