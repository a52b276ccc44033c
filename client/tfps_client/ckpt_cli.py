"""``tfps-ckpt``: list, save, restore, download and inspect tfps checkpoints from a shell."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence

from tfps_client import __version__, checkpoint_files
from tfps_client.client import Client
from tfps_client.errors import TfpsError
from tfps_client.transport import TOKEN_ENVIRONMENT_VARIABLE, tls_credentials
from tfps_client.types import CheckpointInfo
from tfps_client.wire import checkpoint_layout as layout


def _describe(info: CheckpointInfo) -> str:
    saved = datetime.datetime.fromtimestamp(info.saved_at, datetime.timezone.utc)
    iterations = ", ".join(f"{name}={it}" for name, it in sorted(info.iterations.items()))
    return (
        f"{info.id:>6}  {saved:%Y-%m-%d %H:%M:%S}Z  {info.size_bytes:>12}  "
        f"{len(info.variables):>4} variables  iterations: {iterations}"
    )


def _inspect(path: str) -> None:
    try:
        prefix = checkpoint_files.resolve(path)
    except FileNotFoundError as error:
        raise SystemExit(f"tfps-ckpt inspect: {error}") from None
    try:
        import tensorflow as tf
    except ImportError:
        raise SystemExit(
            "tfps-ckpt inspect reads TensorFlow checkpoints: install tensorflow"
        ) from None
    reader = tf.train.load_checkpoint(prefix)
    metadata = layout.CheckpointMetadata.from_json(reader.get_tensor(layout.METADATA_KEY))
    print(f"checkpoint {prefix}, saved {datetime.datetime.fromtimestamp(metadata.saved_at)}")
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
    for key, shape in sorted(reader.get_variable_to_shape_map().items()):
        print(f"  {key} {shape}")


def _add_connection_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--server", default="127.0.0.1:50051", help="host:port of the server")
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
    return Client(args.server, timeout=args.timeout, credentials=credentials, token=args.token)


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of ``tfps-ckpt``."""
    parser = argparse.ArgumentParser(prog="tfps-ckpt", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in [
        ("ls", "list the server's checkpoints"),
        ("save", "make the server write a checkpoint now (admin)"),
        ("restore", "replace the server's state with a checkpoint (admin)"),
        ("download", "download a checkpoint, verifying sizes and SHA-256"),
    ]:
        command = commands.add_parser(name, help=text)
        _add_connection_arguments(command)
        if name in ("restore", "download"):
            command.add_argument(
                "--id", type=int, default=None, help="checkpoint id (default latest)"
            )
        if name == "download":
            command.add_argument("dest", help="local directory for the files")
    inspect = commands.add_parser("inspect", help="print a local checkpoint's contents (needs TF)")
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
                for info in client.list_checkpoints():
                    print(_describe(info))
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
