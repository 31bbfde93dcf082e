import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUNDLE = ROOT.parent.parent / "models" / "phantom-tiny"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def bundle_dir() -> Path:
    return BUNDLE
