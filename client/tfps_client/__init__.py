"""tfps-client: talk to a tfps parameter server from any Python worker.

Needs only numpy, grpcio and protobuf (and ml-dtypes for bfloat16); TensorFlow
helpers live in :mod:`tfps_client.keras` and import TensorFlow lazily.
"""

from tfps_client import aio
from tfps_client.client import Client
from tfps_client.errors import (
    AbortedError,
    AlreadyExistsError,
    CancelledError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TfpsError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
)
from tfps_client.tf_config import ps_addresses
from tfps_client.transport import MAX_MESSAGE_BYTES, channel_options, tls_credentials
from tfps_client.types import (
    Aggregation,
    Async,
    CheckpointInfo,
    CreateVariablesResult,
    IndexedSlices,
    OptimizerOptions,
    Outcome,
    PushResult,
    RetryPolicy,
    Sync,
    VariableInfo,
)
from tfps_client.version import installed_version
from tfps_client.wire.reasons import Reason

__all__ = [
    "MAX_MESSAGE_BYTES",
    "AbortedError",
    "Aggregation",
    "AlreadyExistsError",
    "Async",
    "CancelledError",
    "CheckpointInfo",
    "Client",
    "CreateVariablesResult",
    "DataLossError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "IndexedSlices",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "OptimizerOptions",
    "OutOfRangeError",
    "Outcome",
    "PermissionDeniedError",
    "PushResult",
    "Reason",
    "ResourceExhaustedError",
    "RetryPolicy",
    "Sync",
    "TfpsError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnknownError",
    "VariableInfo",
    "__version__",
    "aio",
    "channel_options",
    "ps_addresses",
    "tls_credentials",
]

__version__ = installed_version("tfps-client")
"""The installed tfps-client's version."""
