"""Request deserializers that turn undecodable bytes into a clear INVALID_ARGUMENT.

gRPC's default deserializer fails with INTERNAL and no hint when a client sends
a `string` field that is not UTF-8 (protobuf rejects it). We parse the request
ourselves; on failure we re-parse it with a twin schema in which every string
is bytes, which always succeeds, and report the first field that is not UTF-8
by its path, e.g. ``items[3].prompt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

_TWIN_PACKAGE_SUFFIX = ".bytes_twin"


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request that could not be parsed; `reason` names the field."""

    reason: str


def lenient_deserializer(cls: type[message.Message]) -> Callable[[bytes], message.Message | Undecodable]:
    def deserialize(data: bytes) -> message.Message | Undecodable:
        try:
            return cls.FromString(data)
        except message.DecodeError:
            return Undecodable(_explain(cls.DESCRIPTOR, data))

    return deserialize


def _explain(descriptor: Descriptor, data: bytes) -> str:
    try:
        twin = _twin_class(descriptor.file.name, descriptor.full_name).FromString(data)
    except message.DecodeError:
        return "request is not a valid protobuf message"
    path = _first_invalid_utf8(twin, descriptor)
    return f"{path}: not valid UTF-8" if path else "request is not a valid protobuf message"


def _first_invalid_utf8(msg: message.Message, original: Descriptor, prefix: str = "") -> str | None:
    for field, value in msg.ListFields():
        orig = original.fields_by_name[field.name]
        name = f"{prefix}{field.name}"
        values = list(value) if _is_repeated(field) else [value]
        for i, v in enumerate(values):
            path = f"{name}[{i}]" if _is_repeated(field) else name
            if orig.type == FieldDescriptor.TYPE_STRING:
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    return path
            elif field.type == FieldDescriptor.TYPE_MESSAGE and orig.message_type is not None:
                found = _first_invalid_utf8(v, orig.message_type, path + ".")
                if found:
                    return found
    return None


def _is_repeated(field: FieldDescriptor) -> bool:
    # `label` is deprecated in newer protobuf releases, which add `is_repeated`.
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED


@cache
def _twin_class(file_name: str, full_name: str) -> type[message.Message]:
    """The message `full_name` from `file_name`, rebuilt in a private pool with strings as bytes."""
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName(file_name).CopyToProto(proto)
    package = proto.package
    proto.package = package + _TWIN_PACKAGE_SUFFIX
    proto.name = file_name + _TWIN_PACKAGE_SUFFIX

    def rewrite(msg: descriptor_pb2.DescriptorProto) -> None:
        map_entry = msg.options.map_entry  # map keys may not be bytes; requests carry no maps
        for f in msg.field:
            if f.type == FieldDescriptor.TYPE_STRING and not map_entry:
                f.type = FieldDescriptor.TYPE_BYTES
            if f.type_name.startswith(f".{package}."):
                f.type_name = f".{proto.package}." + f.type_name[len(package) + 2 :]
        for nested in msg.nested_type:
            rewrite(nested)

    for msg in proto.message_type:
        rewrite(msg)
    del proto.service[:]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    twin_name = proto.package + full_name[len(package) :]
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(twin_name))
