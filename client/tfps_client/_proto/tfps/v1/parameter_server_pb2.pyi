from tfps_client._proto.tfps.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateOptimizerRequest(_message.Message):
    __slots__ = ("name", "config_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class CreateOptimizerResponse(_message.Message):
    __slots__ = ("created",)
    CREATED_FIELD_NUMBER: _ClassVar[int]
    created: bool
    def __init__(self, created: _Optional[bool] = ...) -> None: ...

class VariableDeclaration(_message.Message):
    __slots__ = ("name", "spec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _tensor_pb2.TensorSpec
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ...) -> None: ...

class CreateVariablesRequest(_message.Message):
    __slots__ = ("optimizer", "variables", "chunks")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    variables: _containers.RepeatedCompositeFieldContainer[VariableDeclaration]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, optimizer: _Optional[str] = ..., variables: _Optional[_Iterable[_Union[VariableDeclaration, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class CreateVariablesResponse(_message.Message):
    __slots__ = ("created", "existing")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    created: _containers.RepeatedScalarFieldContainer[str]
    existing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, created: _Optional[_Iterable[str]] = ..., existing: _Optional[_Iterable[str]] = ...) -> None: ...

class ListVariablesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VariableInfo(_message.Message):
    __slots__ = ("name", "spec", "optimizer", "device")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: _tensor_pb2.TensorSpec
    optimizer: str
    device: str
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., optimizer: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class ListVariablesResponse(_message.Message):
    __slots__ = ("variables",)
    VARIABLES_FIELD_NUMBER: _ClassVar[int]
    variables: _containers.RepeatedCompositeFieldContainer[VariableInfo]
    def __init__(self, variables: _Optional[_Iterable[_Union[VariableInfo, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("gradients", "chunks")
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    gradients: _containers.RepeatedCompositeFieldContainer[GradientHeader]
    chunks: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorChunk]
    def __init__(self, gradients: _Optional[_Iterable[_Union[GradientHeader, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[_tensor_pb2.TensorChunk, _Mapping]]] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("iterations",)
    class IterationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    iterations: _containers.ScalarMap[str, int]
    def __init__(self, iterations: _Optional[_Mapping[str, int]] = ...) -> None: ...

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
    __slots__ = ("config_json",)
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    def __init__(self, config_json: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("optimizer", "name", "number", "schedule_json")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_JSON_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    name: str
    number: float
    schedule_json: str
    def __init__(self, optimizer: _Optional[str] = ..., name: _Optional[str] = ..., number: _Optional[float] = ..., schedule_json: _Optional[str] = ...) -> None: ...

class SetHyperparameterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
