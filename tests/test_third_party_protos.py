"""A client in another language compiles the contract from this repository's protos alone."""

from __future__ import annotations

from pathlib import Path

import grpc_tools
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
# What any protoc ships: the well-known types (google/protobuf/*.proto), nothing of googleapis.
WELL_KNOWN_TYPES = Path(grpc_tools.__path__[0]) / "_proto"


def test_the_contract_and_its_rich_errors_compile_from_protos_and_third_party(
    tmp_path: Path,
) -> None:
    descriptors = tmp_path / "passpush.binpb"
    contract = sorted(
        str(path.relative_to(ROOT)) for path in ROOT.glob("protos/passpush/v1/*.proto")
    )
    rich_errors = [f"google/rpc/{name}.proto" for name in ("status", "error_details", "code")]

    exit_code = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{ROOT / 'third_party' / 'googleapis'}",
            f"-I{WELL_KNOWN_TYPES}",
            "--include_imports",
            f"--descriptor_set_out={descriptors}",
            *(name.removeprefix("protos/") for name in contract),
            *rich_errors,
        ]
    )

    assert exit_code == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes())
    names = {file.name for file in compiled.file}
    assert {"passpush/v1/notifications.proto", *rich_errors} <= names
    messages = {
        message.name
        for file in compiled.file
        if file.package == "google.rpc"
        for message in file.message_type
    }
    assert {"Status", "ErrorInfo", "BadRequest", "ResourceInfo"} <= messages
