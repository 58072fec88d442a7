"""Shared pytest setup: tests import the top-level modules directly and run on CPU with few threads."""
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads make tiny ops
# 10-50x slower. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
torch.set_num_threads(min(2, os.cpu_count() or 1))
