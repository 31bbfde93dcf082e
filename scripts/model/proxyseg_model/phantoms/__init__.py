"""Deterministic (seeded) phantoms mirroring the paper's tasks.

Families (objects in order, the order of the SEG segments and of the K masks):
  fundus      RGB colour fundus photograph      [optic disc, optic cup, vessels]
  us          intrapartum ultrasound (+ cine)   [pubic symphysis, fetal head]
  mr          T2-like prostate MR slices/volume [prostate]

Every generator takes an integer seed and returns the same arrays for the same seed.
"""
from .common import FAMILIES, OBJECTS, generate_case  # noqa: F401
