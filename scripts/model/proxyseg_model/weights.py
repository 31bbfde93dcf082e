"""Third-party weights referenced in place: ONNX external data that points into a checkpoint.

A PyTorch checkpoint (`torch.save`, zip format) stores every tensor's bytes uncompressed as
`<archive>/data/<n>`. ONNX external data names a file, an offset and a length. So a graph
exported from a model that holds a third-party checkpoint can keep the project's own
structure and trained tensors inline and point every checkpoint tensor at its bytes inside
the unmodified `.pth`: the bundle commits no third-party weights, the setup only places the
verified checkpoint next to the graphs (`scripts/model/fetch_weights.py`, no torch needed),
and ONNX Runtime reads the tensors from it when the session is created.

Matching is by content (the exact bytes), so it is independent of how the exporter names
initializers; the export must keep checkpoint tensors unfolded (see litemedsam.export_form).
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto


@dataclass
class Entry:
    offset: int
    length: int


def checkpoint_entries(path: Path) -> dict[bytes, Entry]:
    """sha1 of each stored tensor's bytes -> where they lie in the checkpoint file."""
    out: dict[bytes, Entry] = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
        for info in z.infolist():
            if "/data/" not in info.filename or info.filename.endswith("/"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: {info.filename} is compressed; tensors cannot be read in place")
            raw.seek(info.header_offset)
            header = raw.read(30)
            name_len = int.from_bytes(header[26:28], "little")
            extra_len = int.from_bytes(header[28:30], "little")
            offset = info.header_offset + 30 + name_len + extra_len
            data = z.read(info.filename)
            out.setdefault(hashlib.sha1(data).digest(), Entry(offset, len(data)))
    return out


def reference_checkpoint(proto: onnx.ModelProto, checkpoint: Path, location: str, min_bytes: int = 64) -> dict:
    """Turns every initializer whose bytes equal a checkpoint tensor into external data that
    points into `location` (the checkpoint's file name beside the graph). Returns byte counts."""
    entries = checkpoint_entries(Path(checkpoint))
    referenced = inline = 0
    for t in proto.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or not t.raw_data or len(t.raw_data) < min_bytes:
            inline += len(t.raw_data)
            continue
        e = entries.get(hashlib.sha1(t.raw_data).digest())
        if e is None:
            inline += len(t.raw_data)
            continue
        referenced += len(t.raw_data)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", location), ("offset", str(e.offset)), ("length", str(e.length))):
            kv = t.external_data.add()
            kv.key, kv.value = k, v
    return {"referenced_bytes": referenced, "inline_bytes": inline}


def external_locations(proto: onnx.ModelProto) -> set[str]:
    """The external files a graph reads."""
    return {kv.value for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL
            for kv in t.external_data if kv.key == "location"}
