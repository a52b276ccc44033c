"""The wire contract: the committed protobuf modules are exactly what tools/gen_proto.py
generates from proto/, and the proto files pass `buf lint` and `buf breaking` against the
contract of the last release."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from helpers import REPO

COMMITTED = REPO / "client" / "tfps_client" / "wire" / "_proto"

# protoc segfaults in a process that has imported TensorFlow (as this one has, through
# conftest), so tools/gen_proto.py is loaded from its path and run in a fresh interpreter.
GENERATE = """
import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("gen_proto", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.generate(Path(sys.argv[2]))
"""


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """Regenerating into a temporary directory gives the committed files, byte for byte."""
    out = tmp_path / "_proto"
    completed = subprocess.run(
        [sys.executable, "-c", GENERATE, str(REPO / "tools" / "gen_proto.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    generated, committed = _files(out), _files(COMMITTED)
    assert any(name.endswith("parameter_server_pb2_grpc.py") for name in generated)
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale generated files (run `make proto`): {stale}"


# buf: lint, and no breaking change since the last release ---------------------------------------

BUF = REPO / "tools" / "buf" / "node_modules" / ".bin" / "buf"
"""buf as tools/buf/package-lock.json pins it; `make buf` installs it (npm)."""

RELEASED = REPO / "proto" / "released.binpb"
"""The contract of the last release, a buf image: `make release-proto` writes it."""


@pytest.fixture(scope="module")
def buf() -> Path:
    """The pinned buf, installed first if it is missing (a fresh clone)."""
    if not BUF.exists():
        completed = subprocess.run(
            ["make", "--no-print-directory", "buf"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert completed.returncode == 0, f"`make buf` failed:\n{completed.stderr}"
    return BUF


def _run_buf(buf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )


def test_buf_lint_is_clean(buf: Path) -> None:
    """The proto files follow buf's STANDARD and COMMENTS rules (buf.yaml)."""
    completed = _run_buf(buf, "lint")
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_no_breaking_change_since_the_last_release(buf: Path) -> None:
    """Every file, message, field, enum and RPC of the released contract is still there,
    with the same numbers, types and names (buf's FILE rules)."""
    completed = _run_buf(buf, "breaking", "--against", str(RELEASED.relative_to(REPO)))
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_each_first_message_field_of_a_tensor_stream_says_so(buf: Path) -> None:
    """The convention of parameter_server.proto's header: in the messages of a tensor stream
    (those with `chunks`), every other field's comment begins "First message only."."""
    built = subprocess.run(
        [str(buf), "build", "-o", "-"], cwd=REPO, capture_output=True, timeout=300
    )
    assert built.returncode == 0, built.stderr.decode()
    (file,) = [  # a buf image parses as the FileDescriptorSet it extends
        f for f in descriptor_pb2.FileDescriptorSet.FromString(built.stdout).file if f.service
    ]
    comments = {
        (location.path[1], location.path[3]): location.leading_comments.strip()
        for location in file.source_code_info.location
        if len(location.path) == 4 and location.path[0] == 4 and location.path[2] == 2
    }  # (message index, field index) -> comment; 4 and 2: the message_type and field numbers
    streamed = {
        type_name.rsplit(".", 1)[-1]
        for method in file.service[0].method
        for type_name, streaming in (
            (method.input_type, method.client_streaming),
            (method.output_type, method.server_streaming),
        )
        if streaming
    }
    tensor_streams = [
        (index, message)
        for index, message in enumerate(file.message_type)
        if message.name in streamed and any(f.name == "chunks" for f in message.field)
    ]
    assert len(tensor_streams) == 9
    unmarked = [
        f"{message.name}.{field.name}"
        for index, message in tensor_streams
        for field_index, field in enumerate(message.field)
        if field.name != "chunks"
        and not comments[index, field_index].startswith("First message only.")
    ]
    assert not unmarked, unmarked
