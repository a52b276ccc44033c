"""One demo worker on its own: the worker process of ``examples/demo.py``, as a program.

``docker compose up``, the Kubernetes worker Job and the TFJob example run it
against a server started with ``--optimizer`` (the optimizer named ``default``).
Worker ``--index`` i of 2 trains on shard i of scikit-learn's digits with ``model.fit``
and a ``RemoteOptimizer`` (one push-and-pull round trip per batch), and prints its loss
per epoch.

The servers are ``--server``, else the environment variable ``TFPS_SERVER``: one
``host:port`` for one server, or a comma-separated list with one per shard, in shard
order (the pods' ordinal order: ``tfps-0.tfps:50051,tfps-1.tfps:50051``); else every
``ps`` task of ``TF_CONFIG``, in task order. The index, when not given, is this
task's index in ``TF_CONFIG``, else 0. For a secure server, ``--tls-ca`` (with
``--tls-cert`` and ``--tls-key`` under mutual TLS) turns TLS on, and the token is
read from ``--token-file``, else the environment variable ``TFPS_TOKEN``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tfps_client import Client, ps_addresses, tf_config, tls_credentials

from demo import NUM_WORKERS, Settings, run_worker


def server_addresses(servers: str) -> list[str]:
    """Splits a comma-separated ``host:port`` list, in order; refuses an empty entry."""
    addresses = [address.strip() for address in servers.split(",")]
    if not all(addresses):
        raise argparse.ArgumentTypeError(
            f"expected host:port or a comma-separated list of them, received {servers!r}"
        )
    return addresses


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line into ``servers`` (addresses in shard order) and the rest; the
    servers and index fall back as the module says."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server",
        dest="servers",
        type=server_addresses,
        metavar="HOST:PORT[,HOST:PORT...]",
        default=os.environ.get("TFPS_SERVER"),
        help="host:port, or one per shard in shard order, comma-separated "
        "(default: $TFPS_SERVER, else every ps task of TF_CONFIG)",
    )
    parser.add_argument("--index", type=int, default=None, help=f"0 to {NUM_WORKERS - 1}")
    parser.add_argument("--epochs", type=int, default=10, help="default %(default)s")
    parser.add_argument("--batch-size", type=int, default=32, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=300.0,
        help="how long to wait for the servers to accept connections; default %(default)s",
    )
    parser.add_argument("--tls-ca", default=None, help="PEM file of the server's CA; turns TLS on")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate of this worker (mTLS)")
    parser.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--token-file", default=None, help="file holding this worker's token (default: $TFPS_TOKEN)"
    )
    args = parser.parse_args(argv)
    config = tf_config.load()
    if args.servers is None:
        try:
            args.servers = ps_addresses()
        except ValueError as error:
            parser.error(f"--server: expected host:port, TFPS_SERVER or TF_CONFIG ({error})")
    if args.index is None:
        args.index = config.task_index if config is not None else 0
    if not 0 <= args.index < NUM_WORKERS:
        parser.error(f"--index: expected 0 to {NUM_WORKERS - 1}, received {args.index}")
    return args


def connect(args: argparse.Namespace) -> Client:
    """Returns a client of the servers (one address: one server; several: one shard each), with
    TLS and the token when the arguments give them."""
    tls = any(path is not None for path in (args.tls_ca, args.tls_cert, args.tls_key))
    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if tls else None
    token = Path(args.token_file).read_text() if args.token_file else None
    servers = args.servers[0] if len(args.servers) == 1 else args.servers
    return Client(servers, credentials=credentials, token=token)


def main(argv: Sequence[str] | None = None) -> int:
    """Waits for the servers, then trains; returns the exit code."""
    args = parse_args(argv)
    print(f"worker {args.index}: waiting for {','.join(args.servers)}", flush=True)
    # The learning rate is the server's (its --optimizer); the worker only computes gradients.
    settings = Settings(args.epochs, args.batch_size, learning_rate=0.0, seed=args.seed)
    with connect(args) as client:
        client.wait_for_ready(timeout=args.wait_seconds)
        run_worker(args.index, client, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
