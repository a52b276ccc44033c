"""What the blocking and the asyncio clients share: their configuration, pickling, and every
method, written once as steps without I/O (see :mod:`tfps_client.calls`)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

import grpc
import numpy as np
import numpy.typing as npt

from tfps_client import calls, checkpoint_files, checkpoint_groups, sharding
from tfps_client.calls import Steps
from tfps_client.errors import AbortedError, FailedPreconditionError, TfpsError
from tfps_client.tf_config import ps_addresses
from tfps_client.transport import MAX_MESSAGE_BYTES, TlsCredentials, bearer_metadata
from tfps_client.types import (
    Aggregation,
    Async,
    CheckpointInfo,
    CreateVariablesResult,
    OptimizerOptions,
    Outcome,
    PushResult,
    RetryPolicy,
    Sync,
    VariableInfo,
)
from tfps_client.wire import checks, codec, convert
from tfps_client.wire import parameter_server_pb2 as pb
from tfps_client.wire.reasons import Reason

if TYPE_CHECKING:
    from tfps_client import aio

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Client = TypeVar("_Client", bound="Operations")
_Validatable = TypeVar("_Validatable", pb.CreateOptimizerRequest, pb.SetHyperparameterRequest)

LISTING_RESTARTS = 3
"""Times ``list_variables`` starts again when the state is replaced between its pages,
before it raises."""

LOGICAL_SAVE_ATTEMPTS = 8
"""Reads of the shards' iterations a logical save makes, when pushes keep passing the
targets on a shard before its save request arrives (``ITERATIONS_PASSED``)."""

Gradient = Any
"""A numpy array (or array-like), an :class:`IndexedSlices`, or with TensorFlow
imported a ``tf.Tensor``, ``tf.Variable`` or ``tf.IndexedSlices``."""


@dataclass(frozen=True)
class Settings:
    """A client's configuration: what its constructor was given, and what a pickle keeps."""

    addresses: tuple[str, ...]
    """The servers, one per shard, in shard order."""
    timeout: float | None
    max_shard_bytes: int | None
    chunk_bytes: int
    max_message_bytes: int
    credentials: grpc.ChannelCredentials | None
    retry: RetryPolicy
    metadata: tuple[tuple[str, str], ...] = field(repr=False)
    """The token's metadata, as :func:`bearer_metadata` resolved it at construction; left
    out of the repr, which would show the token."""


class ClientMethod(Generic[_P, _T]):
    """A client method written once, as :data:`~tfps_client.calls.Steps`, that each client
    runs its own way: :class:`tfps_client.Client` returns the result, and
    :class:`tfps_client.aio.Client` is a coroutine function of it."""

    def __init__(self, steps: Callable[Concatenate[Any, _P], Steps[_T]]) -> None:
        self._steps = steps
        functools.update_wrapper(cast(Any, self), steps)

    @overload
    def __get__(self, client: None, owner: type) -> ClientMethod[_P, _T]: ...
    @overload
    def __get__(self, client: aio.Client, owner: type) -> Callable[_P, Coroutine[Any, Any, _T]]: ...
    @overload
    def __get__(self, client: Operations, owner: type) -> Callable[_P, _T]: ...
    def __get__(self, client: Operations | None, owner: type) -> Any:
        if client is None:
            return self
        steps, run = self._steps, client._run
        if inspect.iscoroutinefunction(run):

            async def awaited(*args: Any, **kwargs: Any) -> Any:
                return await run(steps(client, *args, **kwargs))

            return functools.update_wrapper(awaited, steps)

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return run(steps(client, *args, **kwargs))

        return functools.update_wrapper(blocking, steps)


class Operations:
    """The configuration and the methods of :class:`tfps_client.Client` (where they are
    documented) and :class:`tfps_client.aio.Client`; each client opens its channel and runs
    the methods' steps."""

    _run: Callable[[Steps[Any]], Any]
    """Runs a method's steps: returns their result, or a coroutine of it."""

    def __init__(
        self,
        address: str | Sequence[str],
        timeout: float | None = 60.0,
        *,
        max_shard_bytes: int | None = None,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        credentials: grpc.ChannelCredentials | None = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
    ) -> None:
        self._settings = Settings(
            _checked_addresses(address),
            _checked_timeout(timeout),
            _checked_max_shard_bytes(max_shard_bytes),
            chunk_bytes,
            max_message_bytes,
            credentials,
            retry or RetryPolicy(),
            bearer_metadata(token),
        )
        self._start()

    @classmethod
    def from_tf_config(
        cls: type[_Client], tf_config: str | Mapping[str, Any] | None = None, **options: Any
    ) -> _Client:
        """A client of the ``ps`` tasks of ``TF_CONFIG``, one shard each in task order.

        Args:
            tf_config: the JSON or its mapping; None reads the ``TF_CONFIG`` variable.
            **options: the constructor's other arguments.

        Raises:
            ValueError: ``TF_CONFIG`` is unset, malformed, or has no ``ps`` task.
        """
        return cls(ps_addresses(tf_config), **options)

    def _start(self) -> None:
        """Opens the channels of :attr:`_settings`, knowing nothing of the shards yet."""
        self._layout: sharding.Layout | None = None
        self._shards_declared = False
        self._known_options: dict[str, OptimizerOptions] = {}
        self._connect()

    def _connect(self) -> None:
        """Prepares the channels of :attr:`_settings`."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """``host:port`` of the server; of a sharded client, the shards' joined by commas."""
        return ",".join(self._settings.addresses)

    @property
    def addresses(self) -> tuple[str, ...]:
        """``host:port`` of each shard, in shard order (one for an unsharded client)."""
        return self._settings.addresses

    @property
    def max_shard_bytes(self) -> int | None:
        """Bytes above which a new variable is split by rows over the shards."""
        return self._settings.max_shard_bytes

    @property
    def timeout(self) -> float | None:
        """Seconds each method call may take, its retries included; ``None`` waits forever."""
        return self._settings.timeout

    @property
    def retry(self) -> RetryPolicy:
        """How calls failing with UNAVAILABLE or DEADLINE_EXCEEDED are retried."""
        return self._settings.retry

    def __getstate__(self) -> Settings:
        """Pickles the configuration; the unpickled client opens a channel of its own.

        Raises:
            TypeError: the client was given credentials other than
                :func:`tfps_client.tls_credentials`'s, which cannot be rebuilt.
        """
        credentials = self._settings.credentials
        if credentials is not None and not isinstance(credentials, TlsCredentials):
            raise TypeError(
                f"cannot pickle a {type(self).__name__} given opaque "
                f"{type(credentials).__name__} credentials (gRPC's cannot be pickled): make "
                "them with tfps_client.tls_credentials(...) to pickle the client"
            )
        return self._settings

    def __setstate__(self, settings: Settings) -> None:
        self._settings = settings
        self._start()

    # Shards -----------------------------------------------------------------------------------

    @property
    def _shards(self) -> int:
        return len(self._settings.addresses)

    def _everywhere(self, call: calls.Call) -> calls.Fanout:
        """``call`` made on every shard at once."""
        return calls.Fanout({shard: calls.one(call) for shard in range(self._shards)})

    def _validated_everywhere(self, method: str, request: _Validatable) -> Steps[dict[int, Any]]:
        """Validates ``request`` on every shard of a sharded client (``validate_only``: every
        check, no change), so that a request one shard refuses is made on none; returns
        their answers. One server is asked nothing: its call checks before it changes."""
        if self._shards == 1:
            return {}
        validation = type(request)(validate_only=True)
        validation.MergeFrom(request)
        return (yield self._everywhere(calls.unary(method, validation)))

    def _known_layout(
        self, names: Iterable[str] = (), *, refresh: bool = False
    ) -> Steps[sharding.Layout]:
        """The layout of a sharded client's variables, listed from the shards on first use,
        and again when ``names`` holds one it does not know (created since by another
        client) or ``refresh`` says so. The first use also declares each server's shard
        index, so that a server given at another index than before refuses
        (``SHARD_MISMATCH``): every server validates its index first (``validate_only``),
        and only if every one accepts are they declared, so that a list one server refuses
        leaves no fresh server of it with an identity."""
        if not self._shards_declared:
            for validate_only in (True, False):
                yield calls.Fanout(
                    {
                        shard: calls.one(
                            calls.unary(
                                "DeclareShard",
                                pb.DeclareShardRequest(
                                    shard=shard, shards=self._shards, validate_only=validate_only
                                ),
                            )
                        )
                        for shard in range(self._shards)
                    }
                )
            self._shards_declared = True
        layout = self._layout
        if refresh or layout is None or any(name not in layout.variables for name in names):
            listings = yield calls.Fanout({shard: _list_all() for shard in range(self._shards)})
            layout = self._layout = sharding.layout_from_listings(
                [listings[shard] for shard in range(self._shards)]
            )
        return layout

    def _home(self, optimizer: str) -> Steps[int]:
        """The first shard holding variables of ``optimizer`` (which has created its slots
        and counts its pushes), or shard 0 when none does."""
        if self._shards == 1:
            return 0
        layout = yield from self._known_layout()
        return next(iter(layout.optimizer_shards(optimizer)), 0)

    def _split_push(
        self, gradients: Mapping[str, Gradient], header: Mapping[str, Any]
    ) -> Steps[dict[int, tuple[dict[str, Any], list[np.ndarray]]]]:
        """The header and tensors of each shard's part of a push (``header`` is the whole
        push's): the gradients of the parts it holds, and ``advance`` naming the pushed
        optimizers none of whose gradients it gets, so that every shard's ``iterations``
        grow together (also on a shard that holds none of an optimizer's variables yet:
        one created there later starts from the same count).

        The whole push is checked first, as one server checks it: gradients that do not
        fit their variables, and non-finite ones for an optimizer that rejects them, are
        refused before any shard is asked. A non-finite gradient of an optimizer that skips
        them is named to every shard (``non_finite``: each gets a gradient or an
        ``advance`` of every optimizer pushed), so that each skips the optimizer's update,
        as one server skips it whole.

        Raises:
            InvalidArgumentError, NotFoundError: as a server refuses the push.
        """
        names = [name for name, gradient in gradients.items() if gradient is not None]
        layout = yield from self._known_layout(names)
        split = sharding.split_gradients(layout, gradients)
        by_optimizer: dict[str, list[str]] = {}
        for name in names:
            by_optimizer.setdefault(layout.get(name).optimizer, []).append(name)
        non_finite = []
        for optimizer, own in sorted(by_optimizer.items()):
            options = yield from self._options(optimizer)
            if options.on_non_finite == "reject":
                sharding.check_finite_gradients([(name, gradients[name]) for name in own])
            elif not sharding.all_finite(gradients[name] for name in own):
                non_finite.append(optimizer)
        pushes = {}
        for shard, parts in split.items():
            shard_header = _shard_header(header, non_finite)
            shard_header["gradients"], arrays = convert.gradients_to_wire(parts)
            pushes[shard] = (shard_header, arrays)
        for optimizer, own in sorted(by_optimizer.items()):
            fed = {shard for name in own for shard in layout.get(name).shards}
            for shard in range(layout.shards):
                if shard not in fed:
                    shard_header, _ = pushes.setdefault(
                        shard, (_shard_header(header, non_finite), [])
                    )
                    shard_header["advance"].append(optimizer)
        return pushes

    def _fan_out_push(
        self,
        gradients: Mapping[str, Gradient],
        pushes: Mapping[int, tuple[dict[str, Any], list[np.ndarray]]],
        call: Callable[[dict[str, Any], list[np.ndarray]], calls.Call],
        push_response: Callable[[Any], pb.PushResponse],
    ) -> Steps[dict[int, Any]]:
        """Makes each shard's ``call`` with its part of a push; returns the answers by shard.

        All shards at once, unless the push has a sync optimizer: then the first shard
        closes each step as one server does (enough workers, backup workers, the timeout),
        and the others are then pushed with the step it closed (``follow``), which they
        close with the same workers' contributions. Every pushed optimizer has a part on the
        first shard (gradients or ``advance``).
        """
        names = [name for name, gradient in gradients.items() if gradient is not None]
        layout = yield from self._known_layout(names)
        sync = []
        for optimizer in sorted({layout.get(name).optimizer for name in names}):
            options = yield from self._options(optimizer)
            if isinstance(options.aggregation, Sync):
                sync.append(optimizer)
        if not sync:
            return (yield calls.Fanout({s: calls.one(call(h, a)) for s, (h, a) in pushes.items()}))
        first = yield from _on(0, call(*pushes[0]))
        results = push_response(first).results
        follow = [convert.step_closed(optimizer, results[optimizer]) for optimizer in sync]
        others = yield calls.Fanout(
            {
                shard: calls.one(call({**header, "follow": follow}, arrays))
                for shard, (header, arrays) in pushes.items()
                if shard != 0
            }
        )
        return {0: first, **others}

    def _options(self, optimizer: str) -> Steps[OptimizerOptions]:
        """The options ``optimizer`` was created with (they never change), asked once."""
        if optimizer not in self._known_options:
            request = pb.GetOptimizerConfigRequest(optimizer=optimizer)
            response = yield from _on(0, calls.unary("GetOptimizerConfig", request))
            self._known_options[optimizer] = convert.options_from_message(response.options)
        return self._known_options[optimizer]

    # Optimizers -------------------------------------------------------------------------------

    @ClientMethod
    def create_optimizer(
        self,
        name: str,
        config: Mapping[str, Any] | str,
        aggregation: Aggregation | None = None,
        on_non_finite: Literal["reject", "skip"] = "reject",
        lazy_sparse: bool = False,
    ) -> Steps[bool]:
        """Creates a named optimizer from a Keras config, like ``tf_keras.optimizers.deserialize``.

        Args:
            name: the name variables and calls refer to, for example ``"default"``.
            config: ``{"class_name": "Adam", "config": {"learning_rate": 1e-3}}`` or its JSON.
            aggregation: :class:`Async` (the default) or :class:`Sync`.
            on_non_finite: "reject" pushes with NaN/Inf gradients (INVALID_ARGUMENT),
                or "skip" their update.
            lazy_sparse: True updates, for a sparse gradient, only the slots and values of
                the rows it holds (TF Addons' LazyAdam semantics), so that a sparse push costs
                what its rows cost, not what the table costs. A different update from Keras's,
                never the default; only Adam, Nadam and RMSprop take it (INVALID_ARGUMENT,
                ``INVALID_OPTIONS``, for the other classes, whose Keras sparse updates already
                touch only the rows given). Dense gradients are applied as Keras applies them.

        A sharded client creates it on every shard or on none: every shard first validates
        it (``validate_only``), and only if every one accepts is it created (skipped when
        every shard holds it already). The window left: another client changing a shard
        between the two round trips.

        Returns:
            True if created, False if an optimizer with an equal config and options existed.

        Raises:
            TypeError: ``config`` is not JSON-serializable, ``aggregation`` is neither
                :class:`Async` nor :class:`Sync`, or an argument has a wrong type.
            ValueError: ``on_non_finite`` or a :class:`Sync` choice is not one of its values.
        """
        if aggregation is not None and not isinstance(aggregation, (Async, Sync)):
            raise TypeError(
                f"create_optimizer: expected aggregation Async(...) or Sync(...), received "
                f"{type(aggregation).__name__}"
            )
        config_json = config if isinstance(config, str) else json.dumps(config)
        request = codec.build_message(
            pb.CreateOptimizerRequest,
            name=name,
            config_json=config_json,
            options=convert.options_to_message(
                OptimizerOptions(aggregation or Async(), on_non_finite, lazy_sparse)
            ),
        )
        validated = yield from self._validated_everywhere("CreateOptimizer", request)
        if validated and not any(response.created for response in validated.values()):
            return False
        responses = yield self._everywhere(calls.unary("CreateOptimizer", request))
        return any(response.created for response in responses.values())

    @ClientMethod
    def get_options(self, optimizer: str) -> Steps[OptimizerOptions]:
        """Returns the options the optimizer was created with: aggregation mode, non-finite
        policy and ``lazy_sparse``.

        Raises:
            TypeError: ``optimizer`` is not a string.
        """
        request = codec.build_message(pb.GetOptimizerConfigRequest, optimizer=optimizer)
        response = yield calls.unary("GetOptimizerConfig", request)
        return convert.options_from_message(response.options)

    @ClientMethod
    def get_config(self, optimizer: str) -> Steps[dict[str, Any]]:
        """Returns ``{"class_name": ..., "config": optimizer.get_config()}``.

        Raises:
            TypeError: ``optimizer`` is not a string.
        """
        request = codec.build_message(pb.GetOptimizerConfigRequest, optimizer=optimizer)
        response = yield calls.unary("GetOptimizerConfig", request)
        config: dict[str, Any] = json.loads(response.config_json)
        return config

    @ClientMethod
    def iterations(self, optimizer: str) -> Steps[int]:
        """Returns how many updates the optimizer has applied.

        A sharded client returns the lowest count of the shards (all count every push; one
        still on its way counts on some only), so that gradients computed at that step are
        ahead of no shard.

        Raises:
            TypeError: ``optimizer`` is not a string.
        """
        request = codec.build_message(pb.GetIterationsRequest, optimizer=optimizer)
        responses = yield self._everywhere(calls.unary("GetIterations", request))
        return min(int(response.iterations) for response in responses.values())

    @ClientMethod
    def slot_names(self, optimizer: str) -> Steps[list[str]]:
        """Returns the optimizer's slot names, as ``optimizer.get_slot_names()``.

        Raises:
            TypeError: ``optimizer`` is not a string.
        """
        request = codec.build_message(pb.GetSlotNamesRequest, optimizer=optimizer)
        shard = yield from self._home(optimizer)
        response = yield from _on(shard, calls.unary("GetSlotNames", request))
        return list(response.slot_names)

    @ClientMethod
    def get_slot(self, variable: str, slot: str) -> Steps[np.ndarray]:
        """Returns one slot's value for one variable, as ``optimizer.get_slot(var, slot)``.

        Raises:
            TypeError: ``variable`` or ``slot`` is not a string.
        """
        request = codec.build_message(pb.GetSlotRequest, variable=variable, slot=slot)
        if self._shards == 1:
            _, (value,) = yield calls.download("GetSlot", request, lambda first: [first.slot])
            return value
        placed = (yield from self._known_layout([variable])).get(variable)
        answers = yield from sharding.as_whole(
            dict.fromkeys(placed.part_names, placed.name),
            calls.Fanout(
                {
                    part.shard: calls.one(
                        calls.download(
                            "GetSlot",
                            pb.GetSlotRequest(variable=part.name, slot=slot),
                            lambda first: [first.slot],
                        )
                    )
                    for part in placed.parts
                }
            ),
        )
        values = {(part.shard, part.name): answers[part.shard][1][0] for part in placed.parts}
        return sharding.join_parts(placed, values)

    @ClientMethod
    def get_weights(self, optimizer: str) -> Steps[list[np.ndarray]]:
        """Returns the optimizer's weights in Keras order: iterations, then slots.

        A sharded client returns one server's list: the slots of split variables joined,
        in the order one server would have created them.

        Raises:
            TypeError: ``optimizer`` is not a string.
        """
        request = codec.build_message(pb.GetOptimizerWeightsRequest, optimizer=optimizer)
        if self._shards == 1:
            _, weights = yield calls.download(
                "GetOptimizerWeights", request, lambda first: first.weights
            )
            return list(weights)
        placed, by_shard = yield from self._weights_of(optimizer)
        return placed.join(by_shard)

    def _weights_of(
        self, optimizer: str
    ) -> Steps[tuple[sharding.OptimizerWeights, dict[int, list[np.ndarray]]]]:
        """Where ``optimizer``'s weights are, and each shard's own list of them."""
        layout = yield from self._known_layout()
        home = yield from self._home(optimizer)
        names = yield from _on(
            home, calls.unary("GetSlotNames", pb.GetSlotNamesRequest(optimizer=optimizer))
        )
        config = yield from _on(
            home,
            calls.unary("GetOptimizerConfig", pb.GetOptimizerConfigRequest(optimizer=optimizer)),
        )
        class_name = json.loads(config.config_json)["class_name"]
        placed = sharding.OptimizerWeights(layout, optimizer, names.slot_names, class_name)
        request = pb.GetOptimizerWeightsRequest(optimizer=optimizer)
        answers = yield calls.Fanout(
            {
                shard: calls.one(
                    calls.download("GetOptimizerWeights", request, lambda first: first.weights)
                )
                for shard in placed.shards or [0]
            }
        )
        return placed, {shard: list(answer[1]) for shard, answer in answers.items()}

    @ClientMethod
    def set_weights(self, optimizer: str, weights: Sequence[npt.ArrayLike]) -> Steps[None]:
        """Replaces the optimizer's weights, with Keras's length and shape checks.

        A sharded client takes one server's list (as :meth:`get_weights` returns it), checks
        its length, and each weight's dtype, shape and values as a server does, before it
        gives each shard its part: a shard checks only the weights it is given, so a weight
        refused by one is refused before any shard sets its own.

        Raises:
            TypeError: ``optimizer`` is not a string or ``weights`` not a sequence.
            ValueError: a weight is not an array of a dtype the wire carries.
        """
        arrays = [np.asarray(w) for w in weights]
        header = {"optimizer": optimizer, "weights": [codec.spec_of(a) for a in arrays]}
        if self._shards == 1:
            yield calls.upload("SetOptimizerWeights", header, arrays)
            return
        placed, by_shard = yield from self._weights_of(optimizer)
        current = by_shard[placed.shards[0] if placed.shards else 0]
        others = len(current) - 1 - len(placed.of_shard(placed.shards[0])) if placed.shards else 0
        parts = placed.split(arrays, others)
        specs = [
            *(
                checks.WeightSpec("a weight other than the slots", w.shape, w.dtype.name)
                for w in current[1 : 1 + others]
            ),
            *(
                checks.WeightSpec(
                    f"slot {checks.shown(slot)} of {checks.shown(v.name)}", v.shape, v.dtype.name
                )
                for v, slot in placed.whole()
            ),
        ]
        sharding.check_weights(optimizer, specs, arrays[1:])
        yield calls.Fanout(
            {
                shard: calls.one(
                    calls.upload(
                        "SetOptimizerWeights",
                        {"optimizer": optimizer, "weights": [codec.spec_of(a) for a in listed]},
                        listed,
                    )
                )
                for shard, listed in parts.items()
            }
        )

    @ClientMethod
    def set_hyperparameter(
        self, optimizer: str, name: str, value: float | Mapping[str, Any]
    ) -> Steps[None]:
        """Changes a hyperparameter at run time, as ``optimizer.learning_rate = 0.05`` does.

        Args:
            optimizer: name of the optimizer.
            name: the hyperparameter, for example ``"learning_rate"`` or ``"beta_1"``.
            value: a number, or for ``learning_rate`` a serialized Keras schedule.

        A sharded client sets it on every shard or on none: every shard first validates the
        value (``validate_only``; a shard checks it against the dtypes of the variables it
        holds), and only if every one accepts is it set. The window left: another client
        changing a shard between the two round trips.

        Raises:
            TypeError: a name is not a string, or ``value`` is neither a number nor a
                JSON-serializable mapping.
            ValueError: ``value`` is a string that is not a number.
        """
        request = codec.build_message(pb.SetHyperparameterRequest, optimizer=optimizer, name=name)
        if isinstance(value, Mapping):
            request.schedule_json = json.dumps(value)
        else:
            request.number = float(value)
        yield from self._validated_everywhere("SetHyperparameter", request)
        yield self._everywhere(calls.unary("SetHyperparameter", request))

    # Variables --------------------------------------------------------------------------------

    @ClientMethod
    def create_variables(
        self, variables: Mapping[str, npt.ArrayLike], optimizer: str = "default"
    ) -> Steps[CreateVariablesResult]:
        """Creates variables with initial values, bound to one optimizer, with their slots.

        Idempotent: the first creator's values win, and an identical declaration
        (name, shape, dtype, optimizer) succeeds without changing anything.

        A sharded client places each new variable on the shard holding the fewest bytes
        (in declaration order), split by rows over several when it has more than
        ``max_shard_bytes``, and records the placement on the shards. Clipping stays
        exactly a single server's: the variables of an optimizer with ``clipnorm`` (a
        norm per variable) are never split, and those of one with ``global_clipnorm``
        (one norm over all its gradients) all go to one shard. Clients creating the same
        variables at once must declare them alike (same names, order and calls), as the
        workers of one model do, so that they place them alike.

        A sharded client creates all or nothing, as one server does: every shard first
        validates its part (``validate_only``: all its checks, its limits and state quota
        included, and no change), and only if every one accepts are the parts created (a
        second round trip, which uploads the values again; skipped when every variable
        exists already). A refusal is the one a server would give; one about a part of a
        split variable (its name's length, say) names the variable declared first. The window
        left: another client changing a shard between the two round trips (creating one
        of these names there with another declaration, or filling its quota) makes that
        shard refuse while the others create their parts. The call raises that shard's
        error; the variables created stay, and a retry of the same call creates the rest
        once the cause is gone (it places only what no shard holds).

        Raises:
            TypeError: ``variables`` is not a mapping, or a name is not a string.
            ValueError: a value is not an array of a dtype the wire carries.
        """
        _expect_mapping("create_variables", "variables", variables)
        names = list(variables)
        arrays = [convert.to_numpy(variables[name]) for name in names]
        header = {
            "optimizer": optimizer,
            "variables": [
                codec.build_message(pb.VariableDeclaration, name=name, spec=codec.spec_of(array))
                for name, array in zip(names, arrays, strict=True)
            ],
        }
        if self._shards == 1:
            response = yield calls.upload("CreateVariables", header, arrays)
            return CreateVariablesResult(tuple(response.created), tuple(response.existing))
        config_request = pb.GetOptimizerConfigRequest(optimizer=optimizer)
        for name, array in zip(names, arrays, strict=True):  # as every shard would
            sharding.check_initial_value(name, array)
        layout = yield from self._known_layout(names)
        response = yield from _on(0, calls.unary("GetOptimizerConfig", config_request))
        clipping = json.loads(response.config_json).get("config", {})
        layout.place(
            [
                sharding.Declared(name, array.shape, array.dtype, optimizer)
                for name, array in zip(names, arrays, strict=True)
            ],
            None if clipping.get("clipnorm") is not None else self.max_shard_bytes,
            together=clipping.get("global_clipnorm") is not None,
        )
        uploads: dict[int, tuple[list[pb.VariableDeclaration], list[np.ndarray]]] = {}
        for name, array in zip(names, arrays, strict=True):
            placed = layout.get(name)
            for part, value in zip(placed.parts, sharding.split_dense(placed, array), strict=True):
                declarations, values = uploads.setdefault(part.shard, ([], []))
                declarations.append(sharding.declaration(layout, placed, part, value))
                values.append(value)
        try:
            responses = yield _creations(optimizer, uploads, validate_only=True)
            if any(response.created for response in responses.values()):
                responses = yield _creations(optimizer, uploads, validate_only=False)
        except TfpsError:
            self._layout = None  # what was placed may not exist: list again next time
            raise
        created = {name for r in responses.values() for name in r.created}
        return CreateVariablesResult(
            tuple(name for name in names if created & set(layout.get(name).part_names)),
            tuple(name for name in names if not created & set(layout.get(name).part_names)),
        )

    @ClientMethod
    def list_variables(self) -> Steps[list[VariableInfo]]:
        """Returns every variable the server holds, in creation order.

        ``VariableInfo.device`` is spelled ``/device:<TYPE>:<index>`` (``/device:CPU:0``,
        ``/device:GPU:1``), as the server's logs and checkpoint metadata spell it.

        The server answers a page at a time, all pages within the one ``timeout``. A restore
        (or a restart of the server) between two pages makes the listing start again from
        the first page, at most :data:`LISTING_RESTARTS` times.

        Raises:
            AbortedError: the state was replaced during every attempt (``STATE_REPLACED``).
        """
        if self._shards == 1:
            return (yield from _list_all())
        layout = yield from self._known_layout(refresh=True)
        return [placed.info() for placed in layout.ordered()]

    @ClientMethod
    def push(
        self,
        gradients: Mapping[str, Gradient],
        *,
        worker: str = "",
        step: int | None = None,
        request_id: str | None = None,
    ) -> Steps[PushResult]:
        """Pushes gradients; each optimizer touched applies them as its aggregation mode says.

        The whole push is validated before anything changes. ``None`` gradients
        are left out. In sync mode the call returns once its step is applied,
        so the worker can pull right after. A stale drop is reported in the
        result, not raised.

        Args:
            gradients: variable name -> dense array or :class:`IndexedSlices`.
            worker: the pushing worker's id (required by :class:`Sync` optimizers).
            step: the optimizer ``iterations`` the gradients were computed from.
            request_id: a unique id; a retry with it is never applied twice.
                Default: a new random id, reused by the client's own retries. A caller
                that may push again after a call whose outcome it did not see (a
                cancelled asyncio task, a deadline that passed) passes its own id, the
                same both times.

        Returns:
            Outcome and ``iterations`` per optimizer touched.

        Raises:
            TypeError: ``gradients`` is not a mapping, or a name, ``worker``, ``step``,
                ``request_id`` or a ``dense_shape`` has a wrong type.
            ValueError: a gradient is not an array of a dtype the wire carries.
        """
        request_id = request_id or uuid.uuid4().hex
        header, arrays = _push_header(gradients, worker, step, request_id)
        if self._shards == 1:
            response = yield calls.upload("Push", header, arrays)
            return convert.push_result(response, request_id)
        pushes = yield from self._split_push(gradients, header)
        responses = yield from self._fan_out_push(
            gradients, pushes, lambda h, a: calls.upload("Push", h, a), lambda r: r
        )
        return _merged_results(responses.values(), request_id)

    @ClientMethod
    def push_pull(
        self,
        gradients: Mapping[str, Gradient],
        pull: Iterable[str],
        *,
        worker: str = "",
        step: int | None = None,
        request_id: str | None = None,
    ) -> Steps[tuple[PushResult, dict[str, np.ndarray]]]:
        """Pushes, then returns the updated values of ``pull``, in one round trip.

        Arguments are those of :meth:`push`; ``pull`` names the variables to return.

        Raises:
            TypeError: as :meth:`push`, or ``pull`` is not an iterable of strings (a single
                string included).
            ValueError: as :meth:`push`.
        """
        request_id = request_id or uuid.uuid4().hex
        header, arrays = _push_header(gradients, worker, step, request_id)
        header["pull"] = _variable_names("pull", pull)
        if self._shards == 1:
            first, values = yield calls.exchange(
                "PushPull", header, arrays, lambda first: [t.spec for t in first.tensors]
            )
            return convert.push_result(first.push, request_id), _named(first.tensors, values)
        pushes = yield from self._split_push(gradients, header)
        layout = yield from self._known_layout(header["pull"])
        wanted = [layout.get(name) for name in header["pull"]]
        for placed in wanted:
            for part in placed.parts:
                shard_header, _ = pushes.setdefault(part.shard, (_shard_header(header), []))
                shard_header["pull"].append(part.name)
        answers = yield from self._fan_out_push(
            gradients,
            pushes,
            lambda h, a: calls.exchange(
                "PushPull", h, a, lambda first: [t.spec for t in first.tensors]
            ),
            lambda answer: answer[0].push,
        )
        values = _by_part(answers)
        result = _merged_results([first.push for first, _ in answers.values()], request_id)
        return result, {placed.name: sharding.join_parts(placed, values) for placed in wanted}

    @ClientMethod
    def pull(self, names: Iterable[str] | None = None) -> Steps[dict[str, np.ndarray]]:
        """Returns the current values of the named variables (all when ``names`` is None).

        Raises:
            TypeError: ``names`` is not an iterable of strings (a single string included).
        """
        wanted = None if names is None else _variable_names("names", names)
        if wanted == []:
            return {}
        if self._shards == 1:
            request = codec.build_message(pb.PullRequest, names=wanted or ())
            first, values = yield calls.download(
                "Pull", request, lambda first: [t.spec for t in first.tensors]
            )
            return _named(first.tensors, values)
        layout = yield from self._known_layout(wanted or (), refresh=wanted is None)
        placed = layout.ordered() if wanted is None else [layout.get(name) for name in wanted]
        asked: dict[int, list[str]] = {}
        for variable in placed:
            for part in variable.parts:
                asked.setdefault(part.shard, []).append(part.name)
        answers = yield calls.Fanout(
            {
                shard: calls.one(
                    calls.download(
                        "Pull",
                        pb.PullRequest(names=part_names),
                        lambda first: [t.spec for t in first.tensors],
                    )
                )
                for shard, part_names in sorted(asked.items())
            }
        )
        values = _by_part(answers)
        return {variable.name: sharding.join_parts(variable, values) for variable in placed}

    @ClientMethod
    def pull_rows(self, name: str, ids: npt.ArrayLike) -> Steps[np.ndarray]:
        """Returns ``variable[ids]``, as an embedding lookup, without sending the whole table.

        ``ids`` may have any shape; the result has shape ``ids.shape + variable.shape[1:]``.

        Raises:
            TypeError: ``name`` is not a string, or ``ids`` are not integers.
            ValueError: ``ids`` is not an array (ragged nested lists).
        """
        shape = np.shape(ids)
        indices = np.asarray(ids).reshape(-1)
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"pull_rows: expected integer ids, received dtype {indices.dtype}")
        request = codec.build_message(
            pb.PullRowsRequest, variable=name, indices=indices.astype(np.int64).tolist()
        )
        if self._shards == 1:
            _, (rows,) = yield calls.download("PullRows", request, lambda first: [first.rows])
            return rows.reshape(shape + rows.shape[1:])
        placed = (yield from self._known_layout([name])).get(name)
        asked = sharding.split_rows(placed, indices.astype(np.int64))
        answers = yield calls.Fanout(
            {
                shard: calls.one(
                    calls.download(
                        "PullRows",
                        pb.PullRowsRequest(variable=part.name, indices=ids.tolist()),
                        lambda first: [first.rows],
                    )
                )
                for shard, (part, ids) in sorted(asked.items())
            }
        )
        rows = sharding.join_rows(
            placed, indices, {shard: answer[1][0] for shard, answer in answers.items()}
        )
        return rows.reshape(shape + rows.shape[1:])

    # Checkpoints ------------------------------------------------------------------------------

    @ClientMethod
    def save_checkpoint(self) -> Steps[CheckpointInfo]:
        """Makes the server write a checkpoint of its whole state now.

        A sharded client saves one logical checkpoint: every shard saves when each
        optimizer's ``iterations`` reach the highest any shard has (pushes in flight
        arrive first; pushes past it wait for the save; should one pass it on a shard before
        the save request arrives there, the counts are read again, up to
        ``LOGICAL_SAVE_ATTEMPTS`` times), under one ``group`` label. Its
        info is the first shard's id and path, with every shard's iterations, bytes and
        variables.
        """
        if self._shards == 1:
            response = yield calls.unary("SaveCheckpoint", pb.SaveCheckpointRequest())
            return convert.checkpoint_info_from_message(response.checkpoint)
        layout = yield from self._known_layout(refresh=True)
        optimizers = sorted({variable.optimizer for variable in layout.variables.values()})
        for attempt in range(1, LOGICAL_SAVE_ATTEMPTS + 1):
            counts = yield calls.Fanout(
                {shard: _iterations_of(optimizers) for shard in range(self._shards)}
            )
            targets = {o: max(counts[shard][o] for shard in counts) for o in optimizers}
            request = pb.SaveCheckpointRequest(at_iterations=targets, group=uuid.uuid4().hex)
            try:
                saved = yield self._everywhere(calls.unary("SaveCheckpoint", request))
                break
            except FailedPreconditionError as error:  # a push passed the targets on a shard
                if error.reason != Reason.ITERATIONS_PASSED or attempt == LOGICAL_SAVE_ATTEMPTS:
                    raise  # between the read and its save: read again
        return checkpoint_groups.merged(
            [convert.checkpoint_info_from_message(saved[s].checkpoint) for s in sorted(saved)]
        )

    @ClientMethod
    def list_checkpoints(self) -> Steps[list[CheckpointInfo]]:
        """Returns the checkpoints the server retains, oldest first; a sharded client's,
        the logical checkpoints every shard holds a part of."""
        if self._shards == 1:
            response = yield calls.unary("ListCheckpoints", pb.ListCheckpointsRequest())
            return [convert.checkpoint_info_from_message(c) for c in response.checkpoints]
        listings = yield from self._checkpoint_listings()
        return [checkpoint_groups.merged(g) for g in checkpoint_groups.complete_groups(listings)]

    @ClientMethod
    def restore_checkpoint(self, checkpoint_id: int | None = None) -> Steps[CheckpointInfo]:
        """Replaces the server's whole state with a checkpoint's (the latest when None).

        A sharded client restores every shard from its part of one logical checkpoint
        (``checkpoint_id`` is the first shard's id, as its info says), or none when a shard
        lacks its part.

        Raises:
            TypeError: ``checkpoint_id`` is not an integer.
            NotFoundError: (sharded) no logical checkpoint has that id.
            FailedPreconditionError: (sharded) a shard lacks its part of it.
        """
        request = codec.build_message(pb.RestoreCheckpointRequest, id=checkpoint_id)
        if self._shards == 1:
            response = yield calls.unary("RestoreCheckpoint", request)
            return convert.checkpoint_info_from_message(response.checkpoint)
        listings = yield from self._checkpoint_listings()
        group = checkpoint_groups.find_group(listings, checkpoint_id)
        self._layout = None  # the restored state is listed again on next use
        restored = yield calls.Fanout(
            {
                shard: calls.one(
                    calls.unary("RestoreCheckpoint", pb.RestoreCheckpointRequest(id=part.id))
                )
                for shard, part in enumerate(group)
            }
        )
        return checkpoint_groups.merged(
            [convert.checkpoint_info_from_message(restored[s].checkpoint) for s in sorted(restored)]
        )

    def _checkpoint_listings(self) -> Steps[list[list[CheckpointInfo]]]:
        """Each shard's own checkpoints, in shard order."""
        yield from self._known_layout()  # the shards know their places
        answers = yield self._everywhere(
            calls.unary("ListCheckpoints", pb.ListCheckpointsRequest())
        )
        return [
            [convert.checkpoint_info_from_message(c) for c in answers[shard].checkpoints]
            for shard in range(self._shards)
        ]

    @ClientMethod
    def download_checkpoint(self, checkpoint_id: int | None, dest_dir: str | Path) -> Steps[str]:
        """Downloads a checkpoint's files into ``dest_dir``, verifying sizes and SHA-256.

        Files are written as ``*.partial`` and renamed only once verified, so an
        interrupted download never leaves a checkpoint that looks complete. The checkpoint
        then becomes the directory's latest (its ``checkpoint`` state file), so the directory
        itself can be given to ``load_into``, ``tfps-ckpt inspect`` or
        ``tf.train.latest_checkpoint``. The download is one streamed call: its retries
        start it again, and it all takes at most ``timeout``.

        Args:
            checkpoint_id: the checkpoint; None for the latest.
            dest_dir: the local directory (created if needed).

        A sharded client downloads each shard's part of one logical checkpoint
        (``checkpoint_id`` as :meth:`restore_checkpoint` takes it) into
        ``dest_dir/shard-<i>-of-<n>``, all at once, each its directory's latest.

        Returns:
            The local path prefix, as ``tf.train.load_checkpoint`` takes it; a sharded
            client's: ``dest_dir``.

        Raises:
            DataLossError: a file's size or digest does not match the server's.
            TypeError: ``checkpoint_id`` is not an integer.
            OSError: ``dest_dir`` cannot be created or written.
            NotFoundError, FailedPreconditionError: (sharded) as :meth:`restore_checkpoint`.
        """
        request = codec.build_message(pb.DownloadCheckpointRequest, id=checkpoint_id)
        if self._shards == 1:
            return (yield from _downloaded(request, Path(dest_dir)))
        listings = yield from self._checkpoint_listings()
        group = checkpoint_groups.find_group(listings, checkpoint_id)
        yield calls.Fanout(
            {
                shard: _downloaded(
                    pb.DownloadCheckpointRequest(id=part.id),
                    Path(dest_dir) / checkpoint_files.shard_directory(shard, len(group)),
                )
                for shard, part in enumerate(group)
            }
        )
        return str(dest_dir)


def _creations(
    optimizer: str,
    uploads: Mapping[int, tuple[list[pb.VariableDeclaration], list[np.ndarray]]],
    *,
    validate_only: bool,
) -> calls.Fanout:
    """Each shard's CreateVariables of its declarations and their values (``uploads``),
    or of their validation only."""
    return calls.Fanout(
        {
            shard: sharding.as_whole(
                {
                    declaration.name: declaration.placement.partition.variable
                    for declaration in declarations
                    if declaration.placement.HasField("partition")
                },
                calls.upload(
                    "CreateVariables",
                    {
                        "optimizer": optimizer,
                        "variables": declarations,
                        "validate_only": validate_only,
                    },
                    values,
                ),
                part_fact=True,
            )
            for shard, (declarations, values) in sorted(uploads.items())
        }
    )


def _downloaded(request: pb.DownloadCheckpointRequest, directory: Path) -> Steps[str]:
    """Downloads one server's checkpoint into ``directory`` and makes it its latest;
    returns its local prefix."""
    manifest = yield calls.download_files("DownloadCheckpoint", request, directory)
    name = Path(manifest.checkpoint.path).name
    checkpoint_files.record_latest(directory, name)
    return str(directory / name)


def _iterations_of(optimizers: Sequence[str]) -> Steps[dict[str, int]]:
    """One server's ``iterations`` of each optimizer."""
    counts = {}
    for optimizer in optimizers:
        response = yield calls.unary("GetIterations", pb.GetIterationsRequest(optimizer=optimizer))
        counts[optimizer] = int(response.iterations)
    return counts


def _on(shard: int, call: calls.Call) -> Steps[Any]:
    """Makes ``call`` on ``shard`` and returns its result."""
    answers = yield calls.Fanout({shard: calls.one(call)})
    return answers[shard]


def _by_part(answers: Mapping[int, tuple[Any, list[np.ndarray]]]) -> dict[tuple[int, str], Any]:
    """The tensors of each shard's answer to a pull, by (shard, the name it sent)."""
    return {
        (shard, name): value
        for shard, (first, tensors) in answers.items()
        for name, value in _named(first.tensors, tensors).items()
    }


def _named(specs: Sequence[pb.NamedTensorSpec], values: Sequence[np.ndarray]) -> dict[str, Any]:
    return {spec.name: value for spec, value in zip(specs, values, strict=True)}


def _list_all() -> Steps[list[VariableInfo]]:
    """Lists every variable of one server, starting again when its state is replaced
    between two pages, at most :data:`LISTING_RESTARTS` times."""
    for _ in range(LISTING_RESTARTS):
        with contextlib.suppress(AbortedError):
            return (yield from _list_pages())
    return (yield from _list_pages())


def _list_pages() -> Steps[list[VariableInfo]]:
    """Lists every variable, page after page, until a page gives no token."""
    infos: list[VariableInfo] = []
    request = pb.ListVariablesRequest()
    while True:
        response = yield calls.unary("ListVariables", request)
        infos += [convert.variable_info_from_message(info) for info in response.variables]
        if not response.next_page_token:
            return infos
        request = pb.ListVariablesRequest(page_token=response.next_page_token)


def _checked_timeout(timeout: float | None) -> float | None:
    """Returns ``timeout`` as a client keeps it: ``None`` (also for infinity) or seconds.

    Raises:
        TypeError: ``timeout`` is not a number.
        ValueError: ``timeout`` is NaN, zero or negative.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"timeout: expected seconds as a number or None, received {type(timeout).__name__}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout: expected seconds above 0 or None, received {timeout}")
    return None if math.isinf(timeout) else float(timeout)


def _checked_addresses(address: str | Sequence[str]) -> tuple[str, ...]:
    """Returns the shards' addresses: one for a string, else each in order.

    Raises:
        TypeError: ``address`` is neither a string nor a sequence of strings.
        ValueError: no address, or one given twice.
    """
    addresses = (address,) if isinstance(address, str) else tuple(address)
    for one in addresses:
        if not isinstance(one, str):
            raise TypeError(
                f"address: expected host:port strings, received {one!r} ({type(one).__name__})"
            )
    if not addresses:
        raise ValueError("address: expected at least one host:port, received none")
    repeated = sorted({one for one in addresses if addresses.count(one) > 1})
    if repeated:
        raise ValueError(f"address: expected each shard once, received {repeated} twice")
    return addresses


def _checked_max_shard_bytes(max_shard_bytes: int | None) -> int | None:
    """Returns ``max_shard_bytes``: None, or a positive integer.

    Raises:
        TypeError: it is not an integer.
        ValueError: it is zero or negative.
    """
    if max_shard_bytes is None:
        return None
    if isinstance(max_shard_bytes, bool) or not isinstance(max_shard_bytes, (int, np.integer)):
        raise TypeError(
            f"max_shard_bytes: expected an integer or None, received "
            f"{type(max_shard_bytes).__name__}"
        )
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes: expected bytes above 0, received {max_shard_bytes}")
    return int(max_shard_bytes)


def _expect_mapping(method: str, argument: str, value: object) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{method}: expected {argument} as a mapping of names to values, received "
            f"{type(value).__name__}"
        )


def _variable_names(argument: str, names: Iterable[str]) -> list[str]:
    """Returns ``names`` as a list, refusing a single string (which would iterate as its
    characters) and anything but strings in it."""
    if isinstance(names, (str, bytes)):
        raise TypeError(
            f"{argument}: expected an iterable of variable names, received the single "
            f"{type(names).__name__} {names!r}; pass [{names!r}]"
        )
    listed = list(names)
    for name in listed:
        if not isinstance(name, str):
            raise TypeError(
                f"{argument}: expected variable names (str), received {name!r} "
                f"({type(name).__name__})"
            )
    return listed


def _shard_header(header: Mapping[str, Any], non_finite: Sequence[str] = ()) -> dict[str, Any]:
    """A shard's copy of a push's header, without gradients (nor variables to pull), naming
    the optimizers whose update the push skips (``non_finite``)."""
    shard_header = {**header, "gradients": [], "advance": [], "non_finite": list(non_finite)}
    if "pull" in header:
        shard_header["pull"] = []
    return shard_header


def _merged_results(responses: Iterable[pb.PushResponse], request_id: str) -> PushResult:
    """One push's result from its shards' results: an optimizer's ``iterations`` are its
    lowest (a step ahead of no shard, while other pushes are on their way), and its outcome
    is a shard's that did not apply or aggregate the push, if any."""
    outcomes: dict[str, Outcome] = {}
    iterations: dict[str, int] = {}
    for response in responses:
        result = convert.push_result(response, request_id)
        for optimizer, outcome in result.outcomes.items():
            counted = result.iterations[optimizer]
            iterations[optimizer] = min(iterations.get(optimizer, counted), counted)
            if outcomes.get(optimizer, Outcome.APPLIED) in (Outcome.APPLIED, Outcome.AGGREGATED):
                outcomes[optimizer] = outcome
    return PushResult(outcomes, iterations, request_id)


def _push_header(
    gradients: Mapping[str, Gradient], worker: str, step: int | None, request_id: str
) -> tuple[dict[str, Any], list[np.ndarray]]:
    _expect_mapping("push", "gradients", gradients)
    headers, arrays = convert.gradients_to_wire(gradients)
    header: dict[str, Any] = {"gradients": headers, "worker": worker, "request_id": request_id}
    if step is not None:
        header["step"] = step
    return header, arrays
