"""Pinned memory: every BO counts against the process's locked-memory limit.

The NPU has no memory of its own: its BOs are host pages the driver locks,
and the kernel counts them against ``RLIMIT_MEMLOCK`` (``ulimit -l``; 8 MiB
by default on many systems). An allocation past it fails with a plain
runtime error from XRT (docs/hardware-facts.md#buffer-objects). The device
layer checks the limit before it allocates, so the error says what was asked
and how to raise the limit, and turns a refusal it could not foresee (other
pinned users in the process) into the same :class:`DeviceError`.
"""

from __future__ import annotations

from collections.abc import Iterable

from npu_pipeline.errors import DeviceError, NpuPipelineError, explain

#: Bytes the driver locks per page: a BO locks whole pages.
PAGE_BYTES = 4096

#: How to raise the limit, in every place it is set.
RAISE_LIMIT = (
    "Raise the locked-memory limit: for a login session add `<user> - memlock unlimited` "
    "(or a size in KiB) to /etc/security/limits.conf and log in again; for a systemd "
    "service set LimitMEMLOCK=infinity in its unit; in the current shell `ulimit -l "
    "unlimited` (up to the hard limit). Or pass a smaller memory_budget."
)


def pinned(sizes: Iterable[int]) -> int:
    """Bytes BOs of ``sizes`` bytes lock (each rounded up to whole pages)."""
    return sum(-(-int(size) // PAGE_BYTES) * PAGE_BYTES for size in sizes)


def process_locked_bytes() -> int:
    """Bytes the process has locked now (``VmLck`` of /proc/self/status; 0 if unreadable)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmLck:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _refusal(asked: int, what: str, limit: int | None, locked: int, said: str = "") -> DeviceError:
    shown = "unlimited" if limit is None else f"{limit} bytes"
    return DeviceError(
        explain(
            f"{what} needs {asked} bytes of pinned memory; the locked-memory limit "
            f"(RLIMIT_MEMLOCK) is {shown} and {locked} bytes are locked{said}",
            "pinned BOs within the limit"
            if limit is None
            else f"at most {max(0, limit - locked)} more pinned bytes",
            RAISE_LIMIT,
        )
    )


def check(asked: int, what: str, limit: int | None, locked: int) -> None:
    """Refuse to pin ``asked`` more bytes past ``limit`` (None: unlimited).

    Raises:
        DeviceError: the limit would be passed; it says how to raise it.
    """
    if limit is not None and locked + asked > limit:
        raise _refusal(asked, what, limit, locked)


def refused(
    error: RuntimeError, asked: int, what: str, limit: int | None, locked: int
) -> RuntimeError:
    """The error to raise for a failed allocation: a DeviceError naming the limit for
    XRT's plain RuntimeError, the library's own errors unchanged."""
    if isinstance(error, NpuPipelineError):
        return error
    return _refusal(asked, what, limit, locked, f" (XRT said: {error})")


#: Pinned bytes a pipeline's budget leaves for instruction BOs: a page each for
#: 16 block shapes (an emulated stream fits one page; a real build's few KiB, two).
INSTRUCTION_RESERVE_BYTES = 16 * PAGE_BYTES


def budget(asked: int | None, default: int, limit: int | None, locked: int) -> int:
    """The pinned bytes a pipeline's slots may use together.

    Args:
        asked: the caller's ``memory_budget``, or None.
        default: the profile's budget, used when ``asked`` is None, capped at
            what the limit leaves (less :data:`INSTRUCTION_RESERVE_BYTES`).
        limit: the locked-memory limit (None: unlimited); locked: bytes locked now.

    Raises:
        DeviceError: ``asked`` does not fit under the limit, or nothing does.
    """
    if limit is None:
        return default if asked is None else asked
    room = limit - locked - INSTRUCTION_RESERVE_BYTES
    if asked is not None:
        check(asked + INSTRUCTION_RESERVE_BYTES, f"memory_budget={asked}", limit, locked)
        return asked
    if room < PAGE_BYTES:
        raise _refusal(default, "the profile's memory budget", limit, locked)
    return min(default, room)
