"""The one error hierarchy of npu_pipeline.

Every error the library raises on purpose derives from :class:`NpuPipelineError`,
so ``except npu_pipeline.NpuPipelineError`` catches all of them. Each also derives
from the built-in exception a Python programmer would expect (``ValueError`` for
a bad value, ``TypeError`` for a bad dtype, ``RuntimeError`` for a device fault),
so generic handlers keep working.

Every message says three things: what was wrong, what is accepted, and what to
do about it. Build messages with :func:`explain` to keep that shape.
"""

from __future__ import annotations


def explain(what: str, expected: str, fix: str) -> str:
    """Format an error message as 'what was wrong; what is accepted; what to do'."""
    return f"{what}; expected {expected}. {fix}"


class NpuPipelineError(Exception):
    """Root of every error raised by npu_pipeline."""


class ShapeError(NpuPipelineError, ValueError):
    """An array has the wrong rank or size, or two shapes do not fit together."""


class DTypeError(NpuPipelineError, TypeError):
    """An array has a dtype the operation does not accept."""


class QuantizationError(NpuPipelineError, ValueError):
    """Float data cannot be quantised (non-finite values, bad scales)."""


class ContractError(NpuPipelineError, ValueError):
    """A kernel contract (``kernel.json``) is missing, malformed or inconsistent."""


class PlanError(NpuPipelineError, ValueError):
    """No batch plan satisfies the constraints (memory budget, block limits, watchdog)."""


class ProfileError(PlanError):
    """A device profile file cannot be used: unreadable, not JSON, or a field missing,
    unknown or out of range (``DeviceProfile.from_json``, ``get_profile(path)``).

    A :class:`PlanError`, as for an unknown profile name: no plan can be made with it.
    """


class OptionError(NpuPipelineError, TypeError):
    """A keyword option is not one the callee accepts (an unknown ``device_options`` key).

    A ``TypeError``, as Python raises for an unexpected keyword argument.
    """


class UsageError(NpuPipelineError, ValueError):
    """A command-line argument of ``npu-pipeline`` cannot be used as given.

    For example an output path that cannot be written, or ``--plot`` without
    matplotlib installed; refused before any work runs.
    """


class DeviceError(NpuPipelineError, RuntimeError):
    """A run on the device did not complete, or the device could not be used.

    Attributes:
        state: name of the run state the device reported (for example
            ``"ERT_CMD_STATE_ERROR"``), or ``None`` when no run was involved.
        batch: index of the batch the failed run belonged to, or ``None``.
        request: id of the request the batch belonged to, or ``None``.
        run: index of the failed run in its slot, when the device named it,
            else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        state: str | None = None,
        batch: int | None = None,
        request: int | None = None,
        run: int | None = None,
    ) -> None:
        super().__init__(message)
        self.state = state
        self.batch = batch
        self.request = request
        self.run = run


class DriverRuleError(NpuPipelineError, RuntimeError):
    """The (emulated) XRT driver refused a call that breaks one of its rules.

    Real pyxrt raises ``RuntimeError`` in these cases; this class derives from
    it so host code written for real pyxrt handles both the same way.
    """


class BufferHazardError(DriverRuleError):
    """A buffer was written, synced or mapped while a run that uses it was in flight.

    On hardware this silently corrupts the run's data (the earlier per-tile
    project shipped exactly this bug); the emulator refuses it instead.
    """


class ModelError(NpuPipelineError, ValueError):
    """A model directory or model file cannot be used.

    For example a CTranslate2 ``model.bin`` of another format version, a variable
    of an unknown dtype, a file cut short, or a weight the encoder needs missing.
    """


class AudioError(NpuPipelineError, ValueError):
    """An audio file cannot be read as 16 kHz mono WAV (another rate, stereo, not a WAV)."""


class DependencyError(NpuPipelineError, ImportError):
    """An optional dependency is not installed (for example ``ctranslate2``, the ``whisper`` extra).

    An ``ImportError``, as Python raises for a missing module.
    """


class TimelineError(NpuPipelineError, ValueError):
    """A span or a timing figure is invalid (unknown stage, end before start, negative time)."""


class PipelineClosedError(NpuPipelineError, RuntimeError):
    """A request was made to, or was still in, a pipeline that has been closed."""


def detached(error: BaseException) -> BaseException:
    """``error`` without tracebacks along its cause chain (the same object).

    A traceback pins the frames of the worker thread that raised, and with
    them a batch's slot and BOs: a caller keeping the error (as tests and
    retry loops do) would keep device memory alive after it was freed.
    The message already names the batch, the request and the run state.
    """
    # Both links of each exception: an error raised from one exception while
    # another was being handled has a cause and a context that differ.
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        link.__traceback__ = None
        pending += [link.__cause__, link.__context__]
    return error
