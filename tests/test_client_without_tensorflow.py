"""The client needs no TensorFlow: installed alone into a fresh virtual environment, it
encodes tensors and trains against a real server running in another process."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import venv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tfps_client import Client

from helpers import LISTENING, REPO, ServerProcess, assert_all_bitwise_equal, free_port

CODEC_SCRIPT = """
import sys

try:
    import tensorflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("tensorflow is importable in the client-only environment")

import ml_dtypes
import numpy as np
import tfps_client
import tfps_client.keras
from tfps_client.wire import codec

arrays = [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 3,
    np.array(2.5, np.float64),
    np.zeros((0, 5), np.float16),
    np.linspace(-3, 3, 11).astype(ml_dtypes.bfloat16),
    np.array([7, -1, 2**40], np.int64),
    np.array([[1, 2], [3, 4]], np.int32).T,
]
specs = [codec.spec_of(a) for a in arrays]
lists = list(codec.iter_chunks(arrays, chunk_bytes=5))
assert len(lists) > 10 and all(sum(len(c.data) for c in cs) <= 5 for cs in lists)
assembler = codec.TensorAssembler(specs)
for chunks in lists:
    assembler.add(chunks)
for got, want in zip(assembler.finish(), arrays, strict=True):
    assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
    assert got.tobytes() == np.ascontiguousarray(want).tobytes(), (got, want)
assert "tensorflow" not in sys.modules
print("codec ok")
"""

TRAIN_SCRIPT = """
import sys

import ml_dtypes
import numpy as np
from tfps_client import Client, IndexedSlices, NotFoundError

with Client(f"127.0.0.1:{sys.argv[1]}", timeout=60) as client:
    client.wait_for_ready(120)
    assert client.create_optimizer("plain", {"class_name": "SGD", "config": {"learning_rate": 0.5}})
    created = client.create_variables(
        {
            "w": np.full((3, 2), 4.0, np.float32),
            "emb": np.zeros((6, 2), np.float32),
            "b16": np.ones(4, ml_dtypes.bfloat16),
        },
        optimizer="plain",
    ).created
    assert created == ("w", "emb", "b16"), created
    result = client.push(
        {
            "w": np.full((3, 2), 2.0, np.float32),
            "emb": IndexedSlices(np.ones((3, 2), np.float32), np.array([1, 1, 4])),
            "b16": np.full(4, 0.5, ml_dtypes.bfloat16),
        }
    )
    assert result.iterations == {"plain": 1}, result
    values = client.pull(["w", "emb", "b16"])
    assert values["w"].dtype == np.float32 and (values["w"] == 3.0).all(), values
    assert values["b16"].dtype == ml_dtypes.bfloat16 and (values["b16"] == 0.75).all(), values
    rows = client.pull_rows("emb", [4, 1, 0])
    assert rows.tolist() == [[-0.5, -0.5], [-1.0, -1.0], [0.0, 0.0]], rows
    try:
        client.pull(["missing"])
    except NotFoundError as error:
        assert "'missing'" in error.message
    else:
        raise SystemExit("pulling a missing variable did not raise NotFoundError")
assert "tensorflow" not in sys.modules
print("train ok")
"""


def _run(python: Path, script: str, *args: str) -> str:
    completed = subprocess.run(
        [str(python), "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def _copy_package(package: str, destination: Path) -> Path:
    """Copies client/ or server/ beside a copy of the top README, as laid out in the repository,
    so that pip builds outside the repository and leaves no build/ or egg-info in it."""
    target = destination / package
    shutil.copytree(
        REPO / package,
        target,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    if (REPO / "README.md").exists():
        shutil.copy(REPO / "README.md", destination / "README.md")
    return target


def _pip(python: Path, *args: str) -> None:
    completed = subprocess.run(
        [str(python), "-m", "pip", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def client_only_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The python of a new virtual environment holding only tfps-client and its dependencies."""
    root = tmp_path_factory.mktemp("client-only")
    source = _copy_package("client", root / "src")
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    _pip(python, "install", str(source))
    yield python


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("package", ["client", "server"])
def test_package_builds_from_the_repository_layout(package: str, tmp_path: Path) -> None:
    """``pip wheel client`` (and server) works with the files laid out as in the repository."""
    source = _copy_package(package, tmp_path / "src")
    _pip(
        Path(sys.executable),
        "wheel",
        "--no-deps",
        "--wheel-dir",
        str(tmp_path / "wheels"),
        str(source),
    )
    assert list((tmp_path / "wheels").glob(f"tfps_{package}-*.whl"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_codec_works_without_tensorflow(client_only_python: Path) -> None:
    """Without TensorFlow installed, tfps_client imports and round-trips tensors."""
    assert "codec ok" in _run(client_only_python, CODEC_SCRIPT)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_client_without_tensorflow_trains_against_a_server(client_only_python: Path) -> None:
    """A TensorFlow-less worker creates, pushes and pulls; the server holds the exact result."""
    port = free_port()
    with ServerProcess(["--port", str(port)]) as server:
        server.wait_for(LISTENING)
        assert "train ok" in _run(client_only_python, TRAIN_SCRIPT, str(port))
        with Client(f"127.0.0.1:{port}") as client:
            assert client.iterations("plain") == 1
            emb = np.zeros((6, 2), np.float32)
            emb[1], emb[4] = -1.0, -0.5
            assert_all_bitwise_equal(
                client.pull(["w", "emb"]), {"w": np.full((3, 2), 3.0, np.float32), "emb": emb}
            )
        assert server.terminate() == 0


def test_importing_the_client_does_not_import_tensorflow() -> None:
    """Even where TensorFlow is installed, tfps_client and tfps_client.keras leave it unloaded."""
    script = (
        "import sys, numpy as np, tfps_client, tfps_client.keras\n"
        "from tfps_client.wire import codec\n"
        "list(codec.iter_chunks([np.zeros(3, np.float32)]))\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    assert _run(Path(sys.executable), script) == ""
