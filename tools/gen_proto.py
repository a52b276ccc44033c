"""Regenerates the protobuf and gRPC modules of tfps_client from proto/.

Usage: python tools/gen_proto.py OUT_DIR

The generated modules live in packages mirroring the proto packages
(``tfps.v1`` -> ``OUT_DIR/tfps/v1``); their imports are rewritten to be
absolute within ``tfps_client.wire._proto`` so the client needs no sys.path tricks.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_PREFIX = "tfps_client.wire._proto"
_IMPORT = re.compile(r"^from tfps\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> None:
    """Writes the generated modules for every .proto file under proto/ into out_dir."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        for source in sorted(Path(scratch).rglob("*.py*")):
            target = out_dir / source.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            text = _IMPORT.sub(f"from {PACKAGE_PREFIX}.tfps.v1 import ", source.read_text())
            target.write_text(text)
    for package in [out_dir, *(p for p in out_dir.rglob("*") if p.is_dir())]:
        (package / "__init__.py").write_text(
            '"""Generated protobuf code; regenerate with `make proto`."""\n'
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    generate(Path(sys.argv[1]))
