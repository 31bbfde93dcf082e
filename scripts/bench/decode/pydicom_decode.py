"""The peer for scripts/bench/decode/run: pydicom decodes FILE the usual way (pixel_array,
every frame at once) and converts it to float32 display values; prints one JSON line."""

import json
import resource
import sys
import time

import numpy as np
import pydicom

t0 = time.perf_counter()
ds = pydicom.dcmread(sys.argv[1])
a = ds.pixel_array.astype(np.float32)
checksum = float(a.sum(dtype=np.float64))
print(
    json.dumps(
        {
            "tool": "pydicom pixel_array",
            "file": sys.argv[1],
            "frames": int(a.shape[0]) if a.ndim == 3 else 1,
            "ms": (time.perf_counter() - t0) * 1000,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "checksum": checksum,
        }
    )
)
