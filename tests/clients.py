"""Both clients behind one blocking interface, so that a scenario runs against each, and a
worker for processes that receive a pickled client. Light to import: spawned processes
import it."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import numpy as np

from tfps_client import Client, aio


class AwaitedClient:
    """A :class:`tfps_client.aio.Client` whose coroutine methods are awaited, one at a time,
    on an event loop of its own: blocking test code calls it as it calls a
    :class:`tfps_client.Client`.

    Args and raises: those of :class:`tfps_client.aio.Client`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.aio = aio.Client(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.aio, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return lambda *args, **kwargs: self.loop.run_until_complete(attribute(*args, **kwargs))

    def __enter__(self) -> AwaitedClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.run_until_complete(self.aio.close())
        self.loop.close()


KINDS = {"blocking": Client, "asyncio": AwaitedClient}
"""The clients, by name, for ``pytest.mark.parametrize``."""


def push_and_pull(client: Client, worker: int) -> tuple[int, np.ndarray]:
    """Run in another process with a pickled client: pushes a gradient of ones for ``w`` as
    ``worker``, and returns the iterations after it and ``w`` as pulled then."""
    with client:
        result = client.push({"w": np.ones(3, np.float32)}, worker=f"worker-{worker}")
        return result.iterations["sgd"], client.pull(["w"])["w"]


async def push_and_pull_async(client: aio.Client) -> tuple[int, np.ndarray]:
    """:func:`push_and_pull` with an asyncio client, in an event loop of this process."""
    async with client:
        result = await client.push({"w": np.ones(3, np.float32)})
        return result.iterations["sgd"], (await client.pull(["w"]))["w"]
