"""Tensors kept in an external file (ONNX external data), read by the project itself.

The shipped bundle's graphs keep LiteMedSAM's tensors in `lite_medsam.pth`, in place. onnx's
own loader refuses a file with more than one hard link ("potential hardlink attack"), and
`real_demo.py` hard-links the bundle's checkpoint into each demo folder, so after the README's
real-image demo every onnx-side read of the bundle failed (derive_int8.py, recover.py). This
reader confines each location to the bundle folder and checks the byte range instead. It needs
only onnx: derive_int8.py runs at setup without torch.
"""
from __future__ import annotations

from pathlib import Path


def inline_external_data(model, folder: Path) -> None:
    """Reads every tensor that `model` keeps in an external file into the model itself.

    A location must name a file inside `folder` (no absolute path, no `..`, no link out of
    it), and its offset and length must lie inside the file; otherwise ValueError, naming the
    tensor."""
    import onnx

    root = folder.resolve()
    files: dict[str, bytes] = {}
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        path = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not path.is_relative_to(root) or not path.is_file():
            raise ValueError(f"tensor {t.name!r}: external data {location!r} is not a file inside {folder}")
        if location not in files:
            files[location] = path.read_bytes()
        data = files[location]
        offset = int(info.get("offset", 0))
        length = int(info.get("length", len(data) - offset))
        if offset < 0 or length < 0 or offset + length > len(data):
            raise ValueError(f"tensor {t.name!r}: bytes {offset}..{offset + length} are outside {location} "
                             f"({len(data)} bytes)")
        t.raw_data = data[offset:offset + length]
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
