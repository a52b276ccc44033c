from tfps_client.wire._proto.tfps.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Reduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDUCTION_UNSPECIFIED: _ClassVar[Reduction]
    REDUCTION_SUM: _ClassVar[Reduction]
    REDUCTION_MEAN: _ClassVar[Reduction]

class TimeoutAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMEOUT_ACTION_UNSPECIFIED: _ClassVar[TimeoutAction]
    TIMEOUT_ACTION_APPLY: _ClassVar[TimeoutAction]
    TIMEOUT_ACTION_DROP: _ClassVar[TimeoutAction]

class NonFinitePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NON_FINITE_POLICY_UNSPECIFIED: _ClassVar[NonFinitePolicy]
    NON_FINITE_POLICY_REJECT: _ClassVar[NonFinitePolicy]
    NON_FINITE_POLICY_SKIP: _ClassVar[NonFinitePolicy]

class PushOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUSH_OUTCOME_UNSPECIFIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_APPLIED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_AGGREGATED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_STALE: _ClassVar[PushOutcome]
    PUSH_OUTCOME_SKIPPED: _ClassVar[PushOutcome]
    PUSH_OUTCOME_DROPPED: _ClassVar[PushOutcome]
REDUCTION_UNSPECIFIED: Reduction
REDUCTION_SUM: Reduction
REDUCTION_MEAN: Reduction
TIMEOUT_ACTION_UNSPECIFIED: TimeoutAction
TIMEOUT_ACTION_APPLY: TimeoutAction
TIMEOUT_ACTION_DROP: TimeoutAction
NON_FINITE_POLICY_UNSPECIFIED: NonFinitePolicy
NON_FINITE_POLICY_REJECT: NonFinitePolicy
NON_FINITE_POLICY_SKIP: NonFinitePolicy
PUSH_OUTCOME_UNSPECIFIED: PushOutcome
PUSH_OUTCOME_APPLIED: PushOutcome
PUSH_OUTCOME_AGGREGATED: PushOutcome
PUSH_OUTCOME_STALE: PushOutcome
PUSH_OUTCOME_SKIPPED: PushOutcome
PUSH_OUTCOME_DROPPED: PushOutcome

class CreateOptimizerRequest(_message.Message):
    __slots__ = ("name", "config_json", "options", "validate_only")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    options: OptimizerOptions
    validate_only: bool
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ..., options: _Optional[_Union[OptimizerOptions, _Mapping]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class AsyncAggregation(_message.Message):
    __slots__ = ("max_staleness",)
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    max_staleness: int
    def __init__(self, max_staleness: _Optional[int] = ...) -> None: ...

class SyncAggregation(_message.Message):
    __slots__ = ("replicas_to_aggregate", "total_num_replicas", "reduction", "timeout_seconds", "on_timeout")
    REPLICAS_TO_AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_NUM_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    replicas_to_aggregate: int
    total_num_replicas: int
    reduction: Reduction
    timeout_seconds: float
    on_timeout: TimeoutAction
    def __init__(self, replicas_to_aggregate: _Optional[int] = ..., total_num_replicas: _Optional[int] = ..., reduction: _Optional[_Union[Reduction, str]] = ..., timeout_seconds: _Optional[float] = ..., on_timeout: _Optional[_Union[TimeoutAction, str]] = ...) -> None: ...

class OptimizerOptions(_message.Message):
    __slots__ = ("asynchronous", "synchronous", "on_non_finite", "lazy_sparse")
    ASYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    ON_NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    LAZY_SPARSE_FIELD_NUMBER: _ClassVar[int]
    asynchronous: AsyncAggregation
    synchronous: SyncAggregation
    on_non_finite: NonFinitePolicy
    lazy_sparse: bool
    def __init__(self, asynchronous: _Optional[_Union[AsyncAggregation, _Mapping]] = ..., synchronous: _Optional[_Union[SyncAggregation, _Mapping]] = ..., on_non_finite: _Optional[_Union[NonFinitePolicy, str]] = ..., lazy_sparse: _Optional[bool] = ...) -> None: ...

class CreateOptimizerResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class VariableDeclaration(_message.Message):
    __slots__ = ("name", "spec", "placement")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _tensor_pb2.TensorSpec
    placement: Placement
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ...) -> None: ...

class Placement(_message.Message):
    __slots__ = ("shard", "shards", "partition", "order", "batch")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    shard: int
    shards: int
    partition: Partition
    order: int
    batch: int
    def __init__(self, shard: _Optional[int] = ..., shards: _Optional[int] = ..., partition: _Optional[_Union[Partition, _Mapping]] = ..., order: _Optional[int] = ..., batch: _Optional[int] = ...) -> None: ...

class Partition(_message.Message):
    __slots__ = ("variable", "index", "count", "row_offset", "shape")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROW_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    variable: str
    index: int
    count: int
    row_offset: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, variable: _Optional[str] = ..., index: _Optional[int] = ..., count: _Optional[int] = ..., row_offset: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class CreateVariablesRequest(_message.Message):
    __slots__ = ("optimizer", "variables", "chunks", "validate_only")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    variables: _containers.RepeatedCompositeFieldContainer[VariableDeclaration]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    validate_only: bool
    def __init__(self, optimizer: _Optional[str] = ..., variables: _Optional[_Iterable[_Union[VariableDeclaration, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateVariablesResponse(_message.Message):
    __slots__ = ("created", "existing")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedScalarFieldContainer[str]
    existing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, created: _Optional[_Iterable[str]] = ..., existing: _Optional[_Iterable[str]] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("name", "spec", "optimizer", "device", "placement")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _tensor_pb2.TensorSpec
    optimizer: str
    device: str
    placement: Placement
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., optimizer: _Optional[str] = ..., device: _Optional[str] = ..., placement: _Optional[_Union[Placement, _Mapping]] = ...) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables", "next_page_token")
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    next_page_token: str
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GradientHeader(_message.Message):
    __slots__ = ("variable", "dense", "sparse")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    DENSE_FIELD_NUMBER: _ClassVar[int]
    SPARSE_FIELD_NUMBER: _ClassVar[int]
    variable: str
    dense: _tensor_pb2.DenseSpec
    sparse: _tensor_pb2.IndexedSlicesSpec
    def __init__(self, variable: _Optional[str] = ..., dense: _Optional[_Union[_tensor_pb2.DenseSpec, _Mapping]] = ..., sparse: _Optional[_Union[_tensor_pb2.IndexedSlicesSpec, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("gradients", "chunks", "request_id", "worker", "step", "advance", "non_finite", "follow")
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_FIELD_NUMBER: _ClassVar[int]
    NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    gradients: _containers.RepeatedCompositeFieldContainer[GradientHeader]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    request_id: str
    worker: str
    step: int
    advance: _containers.RepeatedScalarFieldContainer[str]
    non_finite: _containers.RepeatedScalarFieldContainer[str]
    follow: _containers.RepeatedCompositeFieldContainer[SyncStep]
    def __init__(self, gradients: _Optional[_Iterable[_Union[GradientHeader, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ..., request_id: _Optional[str] = ..., worker: _Optional[str] = ..., step: _Optional[int] = ..., advance: _Optional[_Iterable[str]] = ..., non_finite: _Optional[_Iterable[str]] = ..., follow: _Optional[_Iterable[_Union[SyncStep, _Mapping]]] = ...) -> None: ...

class OptimizerPushResult(_message.Message):
    __slots__ = ("outcome", "iterations", "contributors")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    outcome: PushOutcome
    iterations: int
    contributors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, outcome: _Optional[_Union[PushOutcome, str]] = ..., iterations: _Optional[int] = ..., contributors: _Optional[_Iterable[str]] = ...) -> None: ...

class SyncStep(_message.Message):
    __slots__ = ("optimizer", "outcome", "step", "contributors")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    outcome: PushOutcome
    step: int
    contributors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, optimizer: _Optional[str] = ..., outcome: _Optional[_Union[PushOutcome, str]] = ..., step: _Optional[int] = ..., contributors: _Optional[_Iterable[str]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("results",)
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: OptimizerPushResult
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[OptimizerPushResult, _Mapping]] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.MessageMap[str, OptimizerPushResult]
    def __init__(self, results: _Optional[_Mapping[str, OptimizerPushResult]] = ...) -> None: ...

class PushPullRequest(_message.Message):
    __slots__ = ("gradients", "chunks", "request_id", "worker", "step", "pull", "advance", "non_finite", "follow")
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    ADVANCE_FIELD_NUMBER: _ClassVar[int]
    NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    gradients: _containers.RepeatedCompositeFieldContainer[GradientHeader]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    request_id: str
    worker: str
    step: int
    pull: _containers.RepeatedScalarFieldContainer[str]
    advance: _containers.RepeatedScalarFieldContainer[str]
    non_finite: _containers.RepeatedScalarFieldContainer[str]
    follow: _containers.RepeatedCompositeFieldContainer[SyncStep]
    def __init__(self, gradients: _Optional[_Iterable[_Union[GradientHeader, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ..., request_id: _Optional[str] = ..., worker: _Optional[str] = ..., step: _Optional[int] = ..., pull: _Optional[_Iterable[str]] = ..., advance: _Optional[_Iterable[str]] = ..., non_finite: _Optional[_Iterable[str]] = ..., follow: _Optional[_Iterable[_Union[SyncStep, _Mapping]]] = ...) -> None: ...

class PushPullResponse(_message.Message):
    __slots__ = ("push", "tensors", "chunks")
    PUSH_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    push: PushResponse
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, push: _Optional[_Union[PushResponse, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[NamedTensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class NamedTensorSpec(_message.Message):
    __slots__ = ("name", "spec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _tensor_pb2.TensorSpec
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ...) -> None: ...

class PullResponse(_message.Message):
    __slots__ = ("tensors", "chunks")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, tensors: _Optional[_Iterable[_Union[NamedTensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class PullRowsRequest(_message.Message):
    __slots__ = ("variable", "indices")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    variable: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, variable: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ...) -> None: ...

class PullRowsResponse(_message.Message):
    __slots__ = ("rows", "chunks")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    rows: _tensor_pb2.TensorSpec
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, rows: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class GetOptimizerWeightsRequest(_message.Message):
    __slots__ = ("optimizer",)
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    def __init__(self, optimizer: _Optional[str] = ...) -> None: ...

class GetOptimizerWeightsResponse(_message.Message):
    __slots__ = ("weights", "chunks")
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, weights: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class SetOptimizerWeightsRequest(_message.Message):
    __slots__ = ("optimizer", "weights", "chunks")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    weights: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, optimizer: _Optional[str] = ..., weights: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class SetOptimizerWeightsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOptimizerConfigRequest(_message.Message):
    __slots__ = ("optimizer",)
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    def __init__(self, optimizer: _Optional[str] = ...) -> None: ...

class GetOptimizerConfigResponse(_message.Message):
    __slots__ = ("config_json", "options")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    options: OptimizerOptions
    def __init__(self, config_json: _Optional[str] = ..., options: _Optional[_Union[OptimizerOptions, _Mapping]] = ...) -> None: ...

class GetIterationsRequest(_message.Message):
    __slots__ = ("optimizer",)
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    def __init__(self, optimizer: _Optional[str] = ...) -> None: ...

class GetIterationsResponse(_message.Message):
    __slots__ = ("iterations",)
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    def __init__(self, iterations: _Optional[int] = ...) -> None: ...

class GetSlotNamesRequest(_message.Message):
    __slots__ = ("optimizer",)
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    def __init__(self, optimizer: _Optional[str] = ...) -> None: ...

class GetSlotNamesResponse(_message.Message):
    __slots__ = ("slot_names",)
    SLOT_NAMES_FIELD_NUMBER: _ClassVar[int]
    slot_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, slot_names: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSlotRequest(_message.Message):
    __slots__ = ("variable", "slot")
    VARIABLE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    variable: str
    slot: str
    def __init__(self, variable: _Optional[str] = ..., slot: _Optional[str] = ...) -> None: ...

class GetSlotResponse(_message.Message):
    __slots__ = ("slot", "chunks")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    slot: _tensor_pb2.TensorSpec
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, slot: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class SetHyperparameterRequest(_message.Message):
    __slots__ = ("optimizer", "name", "number", "schedule_json", "validate_only")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_JSON_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    name: str
    number: float
    schedule_json: str
    validate_only: bool
    def __init__(self, optimizer: _Optional[str] = ..., name: _Optional[str] = ..., number: _Optional[float] = ..., schedule_json: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class SetHyperparameterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("id", "path", "saved_at", "size_bytes", "iterations", "variables", "group", "shard")
    class IterationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    id: int
    path: str
    saved_at: float
    size_bytes: int
    iterations: _containers.ScalarMap[str, int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    group: str
    shard: ShardIdentity
    def __init__(self, id: _Optional[int] = ..., path: _Optional[str] = ..., saved_at: _Optional[float] = ..., size_bytes: _Optional[int] = ..., iterations: _Optional[_Mapping[str, int]] = ..., variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ..., group: _Optional[str] = ..., shard: _Optional[_Union[ShardIdentity, _Mapping]] = ...) -> None: ...

class ShardIdentity(_message.Message):
    __slots__ = ("shard", "shards")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    shards: int
    def __init__(self, shard: _Optional[int] = ..., shards: _Optional[int] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("at_iterations", "group")
    class AtIterationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AT_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    at_iterations: _containers.ScalarMap[str, int]
    group: str
    def __init__(self, at_iterations: _Optional[_Mapping[str, int]] = ..., group: _Optional[str] = ...) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointInfo
    def __init__(self, checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class RestoreCheckpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class RestoreCheckpointResponse(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointInfo
    def __init__(self, checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ...) -> None: ...

class DownloadCheckpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("file", "offset", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    offset: int
    data: bytes
    def __init__(self, file: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class FileDigest(_message.Message):
    __slots__ = ("file", "size", "sha256")
    FILE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file: str
    size: int
    sha256: str
    def __init__(self, file: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class DownloadCheckpointResponse(_message.Message):
    __slots__ = ("chunk", "manifest")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    chunk: FileChunk
    manifest: CheckpointManifest
    def __init__(self, chunk: _Optional[_Union[FileChunk, _Mapping]] = ..., manifest: _Optional[_Union[CheckpointManifest, _Mapping]] = ...) -> None: ...

class CheckpointManifest(_message.Message):
    __slots__ = ("checkpoint", "files")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    checkpoint: CheckpointInfo
    files: _containers.RepeatedCompositeFieldContainer[FileDigest]
    def __init__(self, checkpoint: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., files: _Optional[_Iterable[_Union[FileDigest, _Mapping]]] = ...) -> None: ...

class DeclareShardRequest(_message.Message):
    __slots__ = ("shard", "shards", "validate_only")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    shard: int
    shards: int
    validate_only: bool
    def __init__(self, shard: _Optional[int] = ..., shards: _Optional[int] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class DeclareShardResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
