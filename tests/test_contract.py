"""The committed generated code is exactly what `make proto` produces from protos/."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "services" / "common" / "jobwire" / "v1"


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "genproto"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    fresh = tmp_path / "jobwire" / "v1"
    produced = sorted(p.name for p in fresh.iterdir() if p.is_file())
    committed = sorted(
        p.name for p in GENERATED.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"}
    )
    assert produced == committed, "generated files differ: run `make proto`"
    _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, produced, shallow=False)
    assert not mismatch and not errors, f"stale generated code {mismatch}: run `make proto`"


def test_every_declaration_is_commented(tmp_path: Path) -> None:
    """The .proto files are the product's face: every message, field, enum value, service and
    method carries a comment (read from protoc's source info, not guessed from text)."""
    import grpc_tools
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp_path / "contract.pb"
    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{include}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ]
    )
    assert status == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    missing: list[str] = []
    for file in files.file:
        commented = {
            tuple(loc.path)
            for loc in file.source_code_info.location
            if (loc.leading_comments or loc.trailing_comments).strip()
        }
        # Field numbers of FileDescriptorProto / DescriptorProto / ServiceDescriptorProto.
        for m, message in enumerate(file.message_type):
            missing += _check(commented, (4, m), message.name)
            for f, fld in enumerate(message.field):
                missing += _check(commented, (4, m, 2, f), f"{message.name}.{fld.name}")
        for e, enum in enumerate(file.enum_type):
            missing += _check(commented, (5, e), enum.name)
        for s, service in enumerate(file.service):
            missing += _check(commented, (6, s), service.name)
            for r, method in enumerate(service.method):
                missing += _check(commented, (6, s, 2, r), f"{service.name}.{method.name}")
    assert not missing, f"declarations without a comment: {missing}"


def _check(commented: set[tuple[int, ...]], path: tuple[int, ...], name: str) -> list[str]:
    return [] if path in commented else [name]
