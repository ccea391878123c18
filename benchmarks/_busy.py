"""One busy process: spins on a core until it is killed or its parent goes.

Started by ``_harness.busy_processes`` (the "busy machine" condition of the
benchmarks) as ``python _busy.py PARENT_PID``. It prints one line once it is
running, then spins in a plain Python loop, checking every few milliseconds
that its parent is still ``PARENT_PID``: a benchmark killed with SIGKILL leaves
no spinner behind. Standard library only; runs standalone.
"""

from __future__ import annotations

import os
import sys


def spin(parent: int) -> None:
    """Keep one core busy while ``parent`` is this process's parent."""
    while os.getppid() == parent:
        for _ in range(100_000):  # a few milliseconds of pure interpreter work
            pass


def main() -> None:
    parent = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    print("spinning", flush=True)
    try:
        spin(parent)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the harness reaps us
        pass


if __name__ == "__main__":
    main()
