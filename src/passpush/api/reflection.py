"""Server reflection, v1 and v1alpha, answering with the protos' comments.

grpcio-reflection serves v1alpha only, and builds each answer with `CopyToProto`, which on
protobuf's upb leaves a file's source info (its comments) out. So its servicer is given a
pool whose files copy out as `make generate` wrote them into `descriptors.binpb`: the
passpush protos and their imports, comments included, so that `grpcurl describe` shows
the documentation. Any other file (health, reflection v1alpha, google.rpc's error details,
which grpcurl looks up to print an error's details) comes from the process's own pool, as
before. The same servicer answers v1 (grpc.reflection.v1), whose messages are v1alpha's,
field for field, under another package name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

DESCRIPTOR_SET = "descriptors.binpb"  # in passpush.v1, beside the generated code
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serves reflection v1 and v1alpha on `server`, listing `service_names` and itself."""
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names, pool=_PoolWithSource(_files()))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {"ServerReflectionInfo": v1}),)
    )


def _files() -> Iterator[descriptor_pb2.FileDescriptorProto]:
    """The files described with their comments, each after its dependencies."""
    data = resources.files("passpush.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        _leave_out_json_names(file.message_type)
        yield file
    v1alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1alpha)
    yield _v1_of(v1alpha)


def _leave_out_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    """As the process's own descriptors leave them out: grpcurl then prints the fields'
    proto names (`delivered_without_alert`), as it did before and as docs/api.md shows."""
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _leave_out_json_names(message.nested_type)


def _v1_of(v1alpha: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """reflection.proto of v1: v1alpha's messages and service in package grpc.reflection.v1."""
    old, new = f".{v1alpha.package}.", ".grpc.reflection.v1."
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(v1alpha)
    v1.name, v1.package = "grpc/reflection/v1/reflection.proto", new.strip(".")
    v1.ClearField("options")
    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # set only where v1alpha's is: a message field
                field.type_name = field.type_name.replace(old, new)
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return v1


class _PoolWithSource:
    """A DescriptorPool, as far as the reflection servicer uses one: the files given, which
    copy out with the source info they were added with, then the process's own."""

    def __init__(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> None:
        self._pools = (descriptor_pool.DescriptorPool(), descriptor_pool.Default())
        self._serialized: dict[str, bytes] = {}
        for file in files:
            serialized = file.SerializeToString()
            self._pools[0].AddSerializedFile(serialized)
            self._serialized[file.name] = serialized

    def FindFileByName(self, name: str) -> _FileWithSource:
        return self._file(lambda pool: pool.FindFileByName(name))

    def FindFileContainingSymbol(self, symbol: str) -> _FileWithSource:
        def find(pool: descriptor_pool.DescriptorPool) -> FileDescriptor:
            try:
                return pool.FindFileContainingSymbol(symbol)
            except KeyError:
                # upb's pool finds no method by its name (`grpcurl describe Service.Method`):
                # the file of its service (KeyError again if there is none).
                return pool.FindServiceByName(symbol.rpartition(".")[0]).file

        return self._file(find)

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._first(lambda pool: pool.FindMessageTypeByName(name))

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return message.file.pool.FindExtensionByNumber(message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return message.file.pool.FindAllExtensions(message)

    def _file(self, find: Callable[[descriptor_pool.DescriptorPool], Any]) -> _FileWithSource:
        return _FileWithSource(self._first(find), self._serialized)

    def _first(self, find: Callable[[descriptor_pool.DescriptorPool], Any]) -> Any:
        for pool in self._pools[:-1]:
            try:
                return find(pool)
            except KeyError:
                pass
        return find(self._pools[-1])  # KeyError: not found, as the servicer expects


class _FileWithSource:
    def __init__(self, descriptor: FileDescriptor, serialized: dict[str, bytes]) -> None:
        self._descriptor = descriptor
        self._serialized = serialized
        self.name: str = descriptor.name

    @property
    def dependencies(self) -> list[_FileWithSource]:
        return [_FileWithSource(d, self._serialized) for d in self._descriptor.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        serialized = self._serialized.get(self.name)
        if serialized is None:  # one of the process's own
            self._descriptor.CopyToProto(proto)
        else:
            proto.MergeFromString(serialized)
