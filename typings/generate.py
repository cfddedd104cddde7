"""Write the type stubs of the Envoy ext_proc protos this repository uses (``typings/envoy/**.pyi``).

The ``xds-protos`` wheel ships generated ``*_pb2.py`` modules without stubs, so to the type checker every
message was ``Any``. The stubs here are what ``mypy-protobuf`` (``protoc-gen-mypy``) writes for those
``.proto`` files, generated from the descriptors compiled into the installed modules: no ``protoc`` and
no ``.proto`` sources needed, and the stubs match the installed wheel exactly.
``tests/unit/extproc/test_envoy_stubs.py`` fails when they drift from it (a new ``xds-protos`` or
``mypy-protobuf``): rerun ``python typings/generate.py``.

Only the files the code reads are stubbed (:data:`MODULES`); what they import from other files (address,
percent, ...) stays untyped (``envoy.*`` has ``ignore_missing_imports`` in the mypy config).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from google.protobuf.descriptor import FileDescriptor
from mypy_protobuf.main import Descriptors, GRPCType, generate_mypy_grpc_stubs, generate_mypy_stubs

#: the generated modules whose messages the code builds or reads
MODULES = (
    "envoy.service.ext_proc.v3.external_processor_pb2",
    "envoy.config.core.v3.base_pb2",
    "envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2",
    "envoy.type.v3.http_status_pb2",
)
#: the file whose service (``ExternalProcessor``) is served and called: its ``*_pb2_grpc`` stub too
SERVICE = "envoy.service.ext_proc.v3.external_processor_pb2"
ROOT = Path(__file__).resolve().parent


def _closure(files: list[FileDescriptor]) -> list[FileDescriptor]:
    """``files`` and everything they import, each after its imports (the order protoc sends)."""
    seen: dict[str, FileDescriptor] = {}

    def visit(fd: FileDescriptor) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            visit(dep)
        seen[fd.name] = fd

    for fd in files:
        visit(fd)
    return list(seen.values())


def stubs() -> dict[str, str]:
    """Relative path → content of every stub, generated from the installed modules."""
    targets = [importlib.import_module(name).DESCRIPTOR for name in MODULES]
    request = plugin_pb2.CodeGeneratorRequest(parameter="quiet")
    request.file_to_generate.extend(fd.name for fd in targets)
    for fd in _closure(targets):
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        request.proto_file.append(proto)
    response = plugin_pb2.CodeGeneratorResponse()
    generate_mypy_stubs(Descriptors(request), response, True, False, False, False, False)
    del request.file_to_generate[:]
    request.file_to_generate.append(importlib.import_module(SERVICE).DESCRIPTOR.name)
    generate_mypy_grpc_stubs(Descriptors(request), response, True, False, False, False, False, GRPCType.BOTH)
    return {f.name: f.content for f in response.file}


def main() -> int:
    for name, content in stubs().items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
