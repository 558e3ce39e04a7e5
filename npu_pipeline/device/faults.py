"""Turning what the device reports into the library's errors, naming batch and request."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from npu_pipeline.errors import BufferHazardError, DeviceError, DriverRuleError, explain

if TYPE_CHECKING:
    from npu_pipeline.device.commands import Command
    from npu_pipeline.device.slots import Slot
    from npu_pipeline.device.submission import Submission


def state_name(state: Any) -> str:
    """``ERT_CMD_STATE_...`` of a pyxrt state (pybind11 and Python enums both have ``name``)."""
    return getattr(state, "name", str(state))


def translate(error: RuntimeError, sub: Submission) -> RuntimeError:
    """Turn a failed pyxrt call into DeviceError naming the batch and request.

    Rule violations (DriverRuleError, BufferHazardError) are bugs in host
    code, not device faults: they pass unchanged.
    """
    if isinstance(error, DriverRuleError):
        return error
    if isinstance(error, DeviceError):
        if error.batch is not None or error.request is not None:
            return error
        return DeviceError(str(error), state=error.state, batch=sub.batch, request=sub.request)
    return DeviceError(
        explain(
            f"XRT call failed: {error}",
            "a working device",
            "Check `xrt-smi examine` and dmesg; reopen the device.",
        ),
        batch=sub.batch,
        request=sub.request,
    )


def late(sub: Submission, timeout_s: float | None, state: str | None) -> DeviceError:
    """The error of a wait that gave up after ``timeout_s``."""
    return DeviceError(
        explain(
            f"batch {sub.batch} of request {sub.request} did not complete within {timeout_s} s",
            "runs that finish within the timeout",
            "Its runs may still be in flight; the slot stays busy until they end.",
        ),
        state=state,
        batch=sub.batch,
        request=sub.request,
    )


def failed(
    sub: Submission, index: int | None, command: Command, state: str, said: str | None = None
) -> DeviceError:
    """The error of a batch whose run ``index`` failed.

    ``index`` is None when the device does not blame a run of this batch: the
    failed run of a chain is unknown (``said``: what XRT's wait threw), or
    the command only met a context an earlier failure left out of step
    (``command.secondary``). Callers may then run the batch again.
    """
    first, last = command.first, command.first + command.count - 1
    which = f"run {index}" if index is not None else f"a run of runs {first}..{last}"
    cause = ""
    if said is not None:
        cause = f" (XRT's wait raised: {said})"
    if command.secondary:
        cause += (
            " after an earlier run on the same hardware context had failed: its design was "
            "out of step, so this is not the batch's own fault"
        )
    return DeviceError(
        explain(
            f"{which} of batch {sub.batch} (request {sub.request}) ended in {state}{cause}",
            "ERT_CMD_STATE_COMPLETED",
            "The batch's output is lost; retry it or fail its request. The device "
            "recreates its hardware context before its next run.",
        ),
        state=state,
        batch=sub.batch,
        request=sub.request,
        run=index,
    )


def busy(slot: Slot) -> BufferHazardError:
    """The error of starting a slot whose previous batch is still in flight."""
    return BufferHazardError(
        explain(
            f"slot {slot.index} was started while its previous batch is still in flight",
            "one batch in flight per slot",
            "wait() for the previous batch before packing and starting the next one.",
        )
    )
