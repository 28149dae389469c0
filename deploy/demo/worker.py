"""A demo worker that crashes now and then: it works for a random while, then exits 1."""

from __future__ import annotations

import random
import sys
import time

low, high = (float(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (20.0, 60.0)
lifetime = random.uniform(low, high)
print(f"worker up; will crash in {lifetime:.0f}s", flush=True)
time.sleep(lifetime)
print("worker crashing", flush=True)
sys.exit(1)
