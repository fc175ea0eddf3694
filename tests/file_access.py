"""Making "permission denied" real in tests that may run as root (root reads a chmod-000 file)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

# Without these two capabilities root obeys file permission bits like any user.
_DROP = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@functools.lru_cache(maxsize=None)
def permission_enforcing_prefix() -> tuple[str, ...] | None:
    """A command prefix under which chmod 000 denies reading: () for an ordinary user; setpriv
    dropping root's file-access capabilities for root; None when neither works here."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        secret = os.path.join(folder, "secret")
        with open(secret, "w") as file:
            file.write("x")
        os.chmod(secret, 0)
        probe = subprocess.run([*_DROP, "cat", secret], capture_output=True)
    return tuple(_DROP) if probe.returncode != 0 else None


NO_ENFORCEMENT = "running as root without setpriv able to drop CAP_DAC_OVERRIDE: chmod 000 cannot deny a read here"
