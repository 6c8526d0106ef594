"""Facts about the machine a step runs on."""
from __future__ import annotations

import os


def cores() -> int:
    """CPUs this process may run on (a container's cgroup/affinity share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
