"""The committed protobuf modules are exactly what tools/gen_proto.py generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
