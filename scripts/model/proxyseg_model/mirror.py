"""The mirrored second look (`[mirror]` in a manifest): the reference of the Rust engine's
`src/engine/mirror/`.

A bundle may list objects that are segmented twice per frame: once as the frame is, once with
the frame and every support pair mirrored left-right (the resolution views of the listed objects, a support
context of its own). The listed objects' final logits are the mean of the first look's and the
second look's mirrored back; the [[threshold]] cuts and [[shape]] forms then apply as before.
Other objects keep the first look's logits. Frame by frame only: memory mode (one memory bank
per sequence, in one orientation) does not take the second look.

    [mirror]
    objects = ["optic disc", "optic cup"]
    note = "free text"

Session 25's rule E chose it (scripts/model/STATUS.md): on the check cases the mean over the 6
objects rose 87.44 -> 88.36 and the mean single-pair std fell 1.27 -> 0.77, at twice the time
per image. Session 26's rule G took vessels off the list (no measurable gain for 5 more passes
per DRIVE image). The second look runs only the resolution views of the objects it lists.
"""
from __future__ import annotations

import numpy as np

# The shipped real bundle's table (export.py writes it).
SHIPPED = {"objects": ["optic disc", "optic cup", "pubic symphysis", "fetal head"],
           "note": "each frame is also segmented mirrored left-right with the mirrored support set, and the "
                   "two looks' logits averaged (session 25, rule E: check-case mean 87.44 -> 88.36, single-pair "
                   "std 1.27 -> 0.77; twice the time per image); vessels not listed (session 26, rule G: +0.33 "
                   "[-0.13, +0.76] on the check cases for 5 more passes per image)"}


def check(rule: dict | None) -> None:
    """Raises ValueError saying what is wrong (as the engine refuses the manifest)."""
    if rule is None:
        return
    unknown = set(rule) - {"objects", "note"}
    if unknown:
        raise ValueError(f"[mirror]: unknown key(s) {sorted(unknown)}")
    objects = rule.get("objects")
    if not objects or any(not str(o).strip() for o in objects):
        raise ValueError("[mirror]: objects must list at least one non-empty label")
    if len({o.lower() for o in objects}) != len(objects):
        raise ValueError("[mirror]: an object is listed twice")


def object_indices(rule: dict | None, labels: list[str]) -> list[int]:
    """Indices (mask order) of the set's objects the rule lists (case-insensitive)."""
    check(rule)
    if not rule:
        return []
    listed = {o.lower() for o in rule["objects"]}
    return [i for i, label in enumerate(labels) if label.lower() in listed]


def flip(masks: np.ndarray) -> np.ndarray:
    """Masks or logits K x H x W, mirrored left-right."""
    return np.ascontiguousarray(masks[:, :, ::-1])


def flip_display(display: np.ndarray) -> np.ndarray:
    """A display H x W (x 3), mirrored left-right."""
    return np.ascontiguousarray(display[:, ::-1])


def merge(first: np.ndarray, second_mirrored: np.ndarray, objects: list[int]) -> np.ndarray:
    """Final logits K x H x W: the listed objects' mean of the first look and the second look
    (still mirrored, as segmented), the others the first look's."""
    out = first.copy()
    back = second_mirrored[:, :, ::-1]
    for o in objects:
        out[o] = (first[o] + back[o]) * np.float32(0.5)
    return out


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1 when both are empty (the looks agree there is nothing)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def look_agreement(first: np.ndarray, second_mirrored: np.ndarray, objects: list[int],
                   cuts: list[float]) -> list[float | None]:
    """Per object (mask order), the Dice between the first look's mask and the second look's
    mirrored back, each cut at the object's threshold (before [[shape]]); None for objects that
    take one look. The engine's `mirror::agreement` (FrameResult::look_agreement)."""
    back = second_mirrored[:, :, ::-1]
    return [mask_dice(first[o] > cuts[o], back[o] > cuts[o]) if o in objects else None
            for o in range(len(first))]
