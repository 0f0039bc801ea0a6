"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as (TensorFlow's
``tensorflow/python/lib/io/python_io.py``)::

    uint64 length (little-endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

with ``masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`` (mod 2^32) over CRC-32C (Castagnoli).
RL Unplugged's raw files are the same stream inside one GZIP member. Both CRCs are checked, as
TensorFlow's reader does, with ``google-crc32c`` (Google's C implementation; see
``docs/rl_unplugged.md`` for the choice), so a corrupt or truncated file is an error naming the
file, the record and its byte offset, never a silently different episode.

Records are ``tf.train.Example`` protocol buffers, parsed by ``protobuf`` (already a dependency
through TensorBoard) with the five message definitions built here at run time, so no generated
code and no TensorFlow: ``Example{Features features = 1}``, ``Features{map<string, Feature>
feature = 1}``, ``Feature{oneof kind {BytesList bytes_list = 1; FloatList float_list = 2;
Int64List int64_list = 3}}`` and the three lists (proto3: repeated scalars are read packed or
not, as TensorFlow's parser reads them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import google_crc32c
import numpy as np

from pvn.replay.errors import ReplayError
from pvn.replay.gunzip import ERRORS, open_gzip

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def records(path: str | Path, compressed: bool = False) -> Iterator[tuple[int, bytes]]:
    """The records of the TFRecord file ``path`` as ``(byte offset, data)``, CRCs checked.

    Args:
        path: the file.
        compressed: the file is one GZIP stream around the records (RL Unplugged's raw files).

    Yields:
        Each record's offset in the (decompressed) stream and its bytes.
    """
    path = Path(path)
    try:
        f: BinaryIO = open_gzip(path) if compressed else open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise ReplayError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        offset, index = 0, 0
        while True:
            where = f"{path}: record {index} at byte {offset}"
            try:
                head = f.read(12)
                if not head:
                    return
                if len(head) < 12:
                    raise ReplayError(f"{where}: truncated (header of {len(head)} of 12 bytes)")
                (length,) = struct.unpack("<Q", head[:8])
                if struct.unpack("<I", head[8:])[0] != masked_crc32c(head[:8]):
                    raise ReplayError(f"{where}: corrupt (length CRC mismatch)")
                data = f.read(length)
                tail = f.read(4)
            except ERRORS as e:  # a damaged GZIP stream
                raise ReplayError(f"{where}: unreadable ({e})") from None
            if len(data) < length or len(tail) < 4:
                raise ReplayError(f"{where}: truncated ({len(data)} of {length} data bytes)")
            if struct.unpack("<I", tail)[0] != masked_crc32c(data):
                raise ReplayError(f"{where}: corrupt (data CRC mismatch)")
            yield offset, data
            offset += 16 + length
            index += 1


@cache
def _example_class() -> type:
    """``tf.train.Example``'s message class, from its definition (``example.proto`` and
    ``feature.proto`` in TensorFlow), built once."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="pvn_tf_example.proto", package="pvn_tf", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int, str | None]) -> Any:
        m = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None))
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None))
    feature = message(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".pvn_tf.BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".pvn_tf.FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".pvn_tf.Int64List"),
    )
    feature.oneof_decl.add(name="kind")
    for f in feature.field:
        f.oneof_index = 0
    features = message(
        "Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".pvn_tf.Features.FeatureEntry")
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                    type_name=".pvn_tf.Feature")  # fmt: skip
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".pvn_tf.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("pvn_tf.Example"))


def parse_example(data: bytes, where: str) -> dict[str, list[bytes] | np.ndarray]:
    """A ``tf.train.Example``'s features: bytes lists as lists of ``bytes``, float lists as
    float32 arrays, int64 lists as int64 arrays. ``where`` names the record in errors."""
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError as e:
        raise ReplayError(f"{where}: not a tf.train.Example ({e})") from None
    out: dict[str, list[bytes] | np.ndarray] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        else:  # an empty Feature: TensorFlow reads it as an empty list
            out[key] = np.zeros(0, np.float32)
    return out
