import os
import sys

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, leaving the cores to the
# preprocessing workers (measured in docs/benchmarks.md). A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

sys.exit(main())
