"""Request bytes to messages: bytes that are no message, and text no database can store, are
the caller's mistake, answered INVALID_ARGUMENT with the field at fault.

grpc-python answers UNKNOWN, with the parser's exception text, when a request deserializer
raises. The interceptor therefore wraps each method's deserializer with `checked`, which never
raises: it gives a RefusedRequest instead, which the interceptor answers as any other error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from passpush.domain.errors import FieldViolation, InvalidArgument
from passpush.domain.validation import unstorable

_NOT_A_MESSAGE = (
    "is not a valid protobuf encoding of this method's request message "
    "(a string that is not UTF-8, or truncated bytes)"
)


_LONGEST_KEY = 255


class RefusedRequest:
    """What a checked deserializer gives for a request the server must not take."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def checked(
    deserialize: Callable[[bytes], Any] | None, *, look_for_nul: bool = True
) -> Callable[[bytes], Any] | None:
    """`deserialize`, giving a RefusedRequest for undecodable bytes and, with `look_for_nul`,
    for a NUL character in any string field (PostgreSQL text cannot hold one)."""
    if deserialize is None:  # a method that takes raw bytes
        return None

    def run(data: bytes) -> Any:
        try:
            message = deserialize(data)
        except Exception:  # DecodeError or whatever the parser raises: the bytes are at fault
            return RefusedRequest(InvalidArgument.field("request", _NOT_A_MESSAGE))
        # A NUL in a string is a zero byte on the wire: most requests have none, and need
        # no walk over their fields (the one-pass Send, above all).
        if look_for_nul and b"\0" in data:
            violations = unstorable_strings(message)
            if violations:
                return RefusedRequest(InvalidArgument(violations))
        return message

    return run


def unstorable_strings(message: Message, prefix: str = "") -> list[FieldViolation]:
    """Every string of `message` (fields, repeated fields, map keys and values, JSON in a
    Struct) that the databases cannot store, by its path in the request."""
    if isinstance(message, struct_pb2.Struct):
        return _json_object(message, prefix.rstrip("."))
    found: list[FieldViolation] = []
    for field, value in message.ListFields():
        path = prefix + field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            for key, item in value.items():
                found += _value(value_field, item, _entry(path, key))
                if isinstance(key, str) and unstorable(key):
                    found.append(FieldViolation(_entry(path, key), "key " + unstorable(key)))
        elif field.is_repeated:
            for i, item in enumerate(value):
                found += _value(field, item, f"{path}[{i}]")
        else:
            found += _value(field, value, path)
    return found


def _value(field: FieldDescriptor, value: Any, path: str) -> list[FieldViolation]:
    if field.type == FieldDescriptor.TYPE_STRING:
        problem = unstorable(value)
        return [FieldViolation(path, problem)] if problem else []
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return unstorable_strings(value, path + ".")
    return []


def _entry(path: str, key: object) -> str:
    """The path of a map's entry; a key too long to be a sane one is not repeated back."""
    return f"{path}[{key!r}]" if len(repr(key)) <= _LONGEST_KEY else path


def _json_object(struct: struct_pb2.Struct, path: str) -> list[FieldViolation]:
    found = []
    for key, item in struct.fields.items():
        if unstorable(key):
            found.append(FieldViolation(path, "key " + unstorable(key)))
        found += _json_value(item, f"{path}.{key}")
    return found


def _json_value(value: struct_pb2.Value, path: str) -> list[FieldViolation]:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        problem = unstorable(value.string_value)
        return [FieldViolation(path, problem)] if problem else []
    if kind == "struct_value":
        return _json_object(value.struct_value, path)
    if kind == "list_value":
        return [
            violation
            for i, item in enumerate(value.list_value.values)
            for violation in _json_value(item, f"{path}[{i}]")
        ]
    return []
