"""The TFRecord schema shared by Syphus (writer) and the otter_jax training loader (reader).

One `tf.train.Example` per instruction-response pair. The proto classes are built here from a private
descriptor pool that is wire-identical to `tensorflow.core.example.example_pb2`, because importing that module
imports all of TensorFlow (seconds, and it drags JAX in); a private pool also cannot clash with TensorFlow's own
registration when both live in one process. TFRecord framing (length, masked CRC32C, data, masked CRC32C) is
written by hand with `google_crc32c`, so files are readable by `tf.data.TFRecordDataset` and by `read_tfrecord`.

Feature names and types (all `bytes_list`):
  ins_id[1], instruction[1] (utf-8), answer[1] (utf-8), image_ids[n], images[n] (encoded JPEG/PNG parallel to
  image_ids, or empty when images ship separately), rel_ins_ids[k], in_context_ids[k], task[1], group[1], lang[1].
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

GROUPS = ("IMAGE_TEXT", "IMAGE_TEXT_IN_CONTEXT", "VIDEO_TEXT", "TEXT_ONLY")
SCALAR_FEATURES = ("ins_id", "instruction", "answer", "task", "group", "lang")
LIST_FEATURES = ("image_ids", "images", "rel_ins_ids", "in_context_ids")
FEATURES = SCALAR_FEATURES[:3] + LIST_FEATURES + SCALAR_FEATURES[3:]
TEXT_FEATURES = ("ins_id", "instruction", "answer", "task", "group", "lang", "image_ids", "rel_ins_ids", "in_context_ids")


def _build_example_class():
    """Example/Features/Feature messages in package `tensorflow`, registered in a private pool."""
    f = descriptor_pb2.FileDescriptorProto(name="syphus/tf_example.proto", package="tensorflow", syntax="proto3")
    lab_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    lab_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    t = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields, nested=(), oneof=None):
        m = f.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for num, (fname, ftype, label, type_name, packed) in enumerate(fields, start=1):
            fd = m.field.add(name=fname, number=num, type=ftype, label=label)
            if type_name:
                fd.type_name = type_name
            if packed:
                fd.options.packed = True
            if oneof:
                fd.oneof_index = 0
        for n in nested:
            n(m)
        return m

    msg("BytesList", [("value", t.TYPE_BYTES, lab_rep, None, False)])
    msg("FloatList", [("value", t.TYPE_FLOAT, lab_rep, None, True)])
    msg("Int64List", [("value", t.TYPE_INT64, lab_rep, None, True)])
    msg("Feature", [("bytes_list", t.TYPE_MESSAGE, lab_opt, ".tensorflow.BytesList", False),
                    ("float_list", t.TYPE_MESSAGE, lab_opt, ".tensorflow.FloatList", False),
                    ("int64_list", t.TYPE_MESSAGE, lab_opt, ".tensorflow.Int64List", False)], oneof="kind")

    def map_entry(m):
        e = m.nested_type.add(name="FeatureEntry")
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=t.TYPE_STRING, label=lab_opt)
        e.field.add(name="value", number=2, type=t.TYPE_MESSAGE, label=lab_opt, type_name=".tensorflow.Feature")

    msg("Features", [("feature", t.TYPE_MESSAGE, lab_rep, ".tensorflow.Features.FeatureEntry", False)],
        nested=[map_entry])
    msg("Example", [("features", t.TYPE_MESSAGE, lab_opt, ".tensorflow.Features", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_class()


class SchemaError(ValueError):
    """A record or serialized example that does not fit the schema; the message names the record."""


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("utf-8")


@dataclasses.dataclass
class InstructionRecord:
    """One instruction-response pair with everything the loader needs to build an episode."""

    ins_id: str
    instruction: str
    answer: str
    image_ids: list[str] = dataclasses.field(default_factory=list)
    images: list[bytes] = dataclasses.field(default_factory=list)
    rel_ins_ids: list[str] = dataclasses.field(default_factory=list)
    in_context_ids: list[str] = dataclasses.field(default_factory=list)
    task: str = ""
    group: str = "IMAGE_TEXT"
    lang: str = "en"

    def validate(self) -> None:
        where = f"record {self.ins_id!r}"
        if not self.ins_id:
            raise SchemaError("record with empty ins_id")
        if self.group not in GROUPS:
            raise SchemaError(f"{where}: group {self.group!r} is not one of {GROUPS}")
        if self.images and len(self.images) != len(self.image_ids):
            raise SchemaError(f"{where}: {len(self.images)} images but {len(self.image_ids)} image_ids "
                              "(images must be parallel to image_ids, or empty)")
        if self.group == "TEXT_ONLY" and self.image_ids:
            raise SchemaError(f"{where}: TEXT_ONLY record lists image_ids {self.image_ids[:3]}")
        if self.group != "TEXT_ONLY" and not self.image_ids:
            raise SchemaError(f"{where}: group {self.group} needs image_ids")
        if self.in_context_ids and self.group != "IMAGE_TEXT_IN_CONTEXT":
            raise SchemaError(f"{where}: in_context_ids given but group is {self.group}, "
                              "expected IMAGE_TEXT_IN_CONTEXT")

    def to_example(self):
        self.validate()
        ex = Example()
        feats = ex.features.feature
        for name in FEATURES:
            value = getattr(self, name)
            values = value if name in LIST_FEATURES else [value]
            feats[name].bytes_list.value.extend(_b(v) for v in values)
        return ex

    def to_example_bytes(self) -> bytes:
        return self.to_example().SerializeToString(deterministic=True)

    @classmethod
    def from_example(cls, ex) -> "InstructionRecord":
        feats = ex.features.feature
        missing = [n for n in FEATURES if n not in feats]
        if missing:
            got = feats["ins_id"].bytes_list.value[:1] if "ins_id" in feats else "?"
            raise SchemaError(f"example {got}: missing features {missing}")
        kw = {}
        for name in FEATURES:
            vals = list(feats[name].bytes_list.value)
            if name in SCALAR_FEATURES and len(vals) != 1:
                raise SchemaError(f"example {feats['ins_id'].bytes_list.value[:1]}: feature {name!r} "
                                  f"has {len(vals)} values, expected 1")
            if name in TEXT_FEATURES:
                vals = [v.decode("utf-8") for v in vals]
            kw[name] = vals if name in LIST_FEATURES else vals[0]
        rec = cls(**kw)
        rec.validate()
        return rec

    @classmethod
    def from_example_bytes(cls, data: bytes) -> "InstructionRecord":
        ex = Example()
        ex.ParseFromString(data)
        return cls.from_example(ex)


# ---- TFRecord framing -------------------------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_tfrecord_bytes(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
    """Write raw payloads as an uncompressed TFRecord file atomically (tmp file + rename); returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "wb") as fh:
        for data in payloads:
            header = struct.pack("<Q", len(data))
            fh.write(header + struct.pack("<I", _masked_crc(header)) + data + struct.pack("<I", _masked_crc(data)))
            n += 1
    os.replace(tmp, path)
    return n


def read_tfrecord_bytes(path: str | os.PathLike) -> Iterator[bytes]:
    """Yield payloads of a TFRecord file, checking both CRCs; errors name the file and byte offset."""
    with open(path, "rb") as fh:
        while True:
            offset = fh.tell()
            header = fh.read(12)
            if not header:
                return
            if len(header) < 12:
                raise SchemaError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
                raise SchemaError(f"{path}: corrupt length CRC at byte {offset}")
            data = fh.read(length)
            footer = fh.read(4)
            if len(data) < length or len(footer) < 4:
                raise SchemaError(f"{path}: truncated record at byte {offset}")
            if struct.unpack("<I", footer)[0] != _masked_crc(data):
                raise SchemaError(f"{path}: corrupt data CRC at byte {offset}")
            yield data


def write_tfrecord(path: str | os.PathLike, records: Iterable[InstructionRecord]) -> int:
    """Write InstructionRecords, one tf.train.Example each; returns the number written."""
    return write_tfrecord_bytes(path, (r.to_example_bytes() for r in records))


def read_tfrecord(path: str | os.PathLike) -> Iterator[InstructionRecord]:
    for i, data in enumerate(read_tfrecord_bytes(path)):
        try:
            yield InstructionRecord.from_example_bytes(data)
        except SchemaError as e:
            raise SchemaError(f"{path}: record #{i}: {e}") from None
