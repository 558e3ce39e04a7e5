"""Locked pages: every emulated root BO counts against the locked-memory limit.

On the NPU a BO is host memory the driver maps locked, counted against
``RLIMIT_MEMLOCK`` (docs/hardware-facts.md#buffer-objects); the count here is
the process's, across devices, as the kernel's is.
"""

from __future__ import annotations

import threading

from npu_pipeline.emulator._state import DeviceState
from npu_pipeline.errors import explain

_LOCK = threading.Lock()
#: Bytes the driver locks per page: a BO locks whole pages.
PAGE_BYTES = 4096
# Locked bytes of every live root BO of the process, as the kernel counts them.
_locked_bytes = 0


def locked_bytes() -> int:
    """Bytes the process's live emulated root BOs lock (whole pages), as ``VmLck`` counts."""
    return _locked_bytes


def lock_pages(state: DeviceState, size: int) -> int:
    """Count a new root BO of ``state`` against the locked-memory limit; return the bytes locked.

    Raises:
        RuntimeError: the limit would be passed (plain, like XRT's failed ``mmap``).
    """
    global _locked_bytes
    pages = -(-size // PAGE_BYTES) * PAGE_BYTES
    with _LOCK:
        limit = state.memlock_bytes
        if limit is not None and _locked_bytes + pages > limit:
            raise RuntimeError(
                explain(
                    f"bo allocation failed: mmap(MAP_LOCKED) of {pages} bytes: Resource "
                    f"temporarily unavailable ({_locked_bytes} bytes of the locked-memory "
                    f"limit of {limit} are in use)",
                    "pinned BOs within RLIMIT_MEMLOCK",
                    "Raise the limit (ulimit -l) or allocate less.",
                )
            )
        _locked_bytes += pages
    return pages


def unlock_pages(pages: int) -> None:
    """A root BO that locked ``pages`` bytes was freed."""
    global _locked_bytes
    with _LOCK:
        _locked_bytes -= pages
