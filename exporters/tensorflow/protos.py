"""The few TensorFlow protobuf messages a checkpoint reader needs, declared here field for field as
TensorFlow's .proto files number them (tensor_bundle.proto, tensor_shape.proto, versions.proto,
trackable_object_graph.proto, tensor_slice.proto), so the protobuf library parses them without TensorFlow installed.

Only the fields read are declared; protobuf keeps the others as unknown fields. Enums are declared
as int32 (the same varint on the wire), and repeated messages never looked into as bytes. A field
labelled "oneof" sits alone in a oneof named `has_<field>`, as TensorFlow declares the one field whose
presence means something (an extent's length: absent is the whole dimension, not 0). The messages
live in a pool of their own, apart from TensorFlow's when both are loaded.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from convert.errors import CorruptInputError, first_line

PACKAGE = "rust_model_convert.tf"
# message -> [(field name, number, type, label, message type)]; label "repeated", "optional" or "oneof"
_MESSAGES: dict[str, list[tuple[str, int, str, str, str | None]]] = {
    "Dim": [("size", 1, "int64", "optional", None), ("name", 2, "string", "optional", None)],
    "TensorShapeProto": [("dim", 2, "message", "repeated", "Dim"), ("unknown_rank", 3, "bool", "optional", None)],
    "VersionDef": [
        ("producer", 1, "int32", "optional", None),
        ("min_consumer", 2, "int32", "optional", None),
        ("bad_consumers", 3, "int32", "repeated", None),
    ],
    "BundleHeaderProto": [
        ("num_shards", 1, "int32", "optional", None),
        ("endianness", 2, "int32", "optional", None),
        ("version", 3, "message", "optional", "VersionDef"),
    ],
    "BundleEntryProto": [
        ("dtype", 1, "int32", "optional", None),
        ("shape", 2, "message", "optional", "TensorShapeProto"),
        ("shard_id", 3, "int32", "optional", None),
        ("offset", 4, "int64", "optional", None),
        ("size", 5, "int64", "optional", None),
        ("crc32c", 6, "fixed32", "optional", None),
        ("slices", 7, "message", "repeated", "TensorSliceProto"),
    ],
    "Extent": [("start", 1, "int64", "optional", None), ("length", 2, "int64", "oneof", None)],
    "TensorSliceProto": [("extent", 1, "message", "repeated", "Extent")],
    "ObjectReference": [("node_id", 1, "int32", "optional", None), ("local_name", 2, "string", "optional", None)],
    "SerializedTensor": [
        ("name", 1, "string", "optional", None),
        ("full_name", 2, "string", "optional", None),
        ("checkpoint_key", 3, "string", "optional", None),
    ],
    "TrackableObject": [
        ("children", 1, "message", "repeated", "ObjectReference"),
        ("attributes", 2, "message", "repeated", "SerializedTensor"),
    ],
    "TrackableObjectGraph": [("nodes", 1, "message", "repeated", "TrackableObject")],
}


@cache
def _pool() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool

    field_proto = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(name="rust_model_convert_tf.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        msg = file_proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = msg.field.add(
                name=field_name,
                number=number,
                type=getattr(field_proto, f"TYPE_{kind.upper()}"),
                label=getattr(field_proto, f"LABEL_{'OPTIONAL' if label == 'oneof' else label.upper()}"),
            )
            if label == "oneof":
                msg.oneof_decl.add(name=f"has_{field_name}")
                entry.oneof_index = len(msg.oneof_decl) - 1
            if type_name:
                entry.type_name = f".{PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return pool


@cache
def message(name: str) -> Any:
    """The message class of one declared message."""
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))


def parse(name: str, raw: bytes, failure: str) -> Any:
    """`raw` as the named message; a damaged one is CorruptInputError "`failure` (protobuf's reason)"."""
    from google.protobuf.message import DecodeError

    proto = message(name)()
    try:
        proto.ParseFromString(raw)
    except DecodeError as exc:
        raise CorruptInputError(f"{failure} ({first_line(exc)})") from None
    return proto
