"""``pyxrt.kernel``, ``pyxrt.run`` and ``pyxrt.runlist``, with the driver's argument checks.

Starting a run checks its arguments against the kernel contract the way the
driver and firmware would, and raises ``DriverRuleError`` (a RuntimeError,
like real pyxrt) for: a wrong argument count or opcode, an instruction BO that
is not ``cacheable`` or not in the instruction group, a data BO that is not
``host_only`` or in the wrong group, an instruction count beyond the
instruction BO, or a data BO too small for the block the instructions name.

The block shape is read from the instruction BO's *device copy*: a stream
that does not decode (never synced, wrong count, corrupted, built for another
contract or NPU generation) is not refused at start; the run ends in
``ERT_CMD_STATE_ERROR``, as the firmware fails it on hardware.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from npu_pipeline.emulator._buffers import Use, bo, claim, release
from npu_pipeline.emulator._device import hw_context
from npu_pipeline.emulator._enums import BOFlags, ert_cmd_state
from npu_pipeline.emulator._instructions import (
    WORDS,
    InstructionStream,
    MalformedInstructions,
    decode,
    instruction_count,
)
from npu_pipeline.emulator._queue import Command, Launch
from npu_pipeline.errors import (
    BufferHazardError,
    ContractError,
    DeviceError,
    DriverRuleError,
    explain,
)

#: Runs one runlist chains into one command (NPU_FACTS.md: up to 24).
RUNLIST_MAX = 24

NEW = ert_cmd_state.ERT_CMD_STATE_NEW
TIMEOUT = ert_cmd_state.ERT_CMD_STATE_TIMEOUT
COMPLETED = ert_cmd_state.ERT_CMD_STATE_COMPLETED


def _rule(what: str, expected: str, fix: str) -> DriverRuleError:
    return DriverRuleError(explain(what, expected, fix))


class kernel:
    """``kernel(hw_context, name)``: the contract's kernel in a hardware context."""

    def __init__(self, ctx: hw_context, name: str) -> None:
        if not isinstance(ctx, hw_context):
            raise _rule(
                f"kernel() got a {type(ctx).__name__}",
                "kernel(hw_context, name)",
                "On the NPU, kernels live in a hardware context: create one first.",
            )
        ctx._state.check_alive("kernel creation")
        self._ctx = ctx
        self._contract = ctx.get_xclbin().contract
        if name != self._contract.kernel_name:
            raise _rule(
                f"no kernel {name!r} in the xclbin",
                f"{self._contract.kernel_name!r}",
                "Use a name from xclbin.get_kernels().",
            )

    def group_id(self, index: int) -> int:
        """The memory group of argument ``index`` (a BO argument)."""
        arguments = self._contract.arguments
        name = arguments[index] if 0 <= index < len(arguments) else None
        if name == "instr":
            return self._contract.instr_group_id
        if name in ("opcode", "n_insts", None):
            raise _rule(
                f"argument {index} ({name}) has no memory group",
                f"the index of a BO argument of {list(arguments)}",
                "Ask for the group of a buffer argument.",
            )
        return self._contract.buffer(name).group_id

    def __call__(self, *args: Any) -> run:
        """Set every argument and start a run; return it."""
        started = run(self)
        for index, value in enumerate(args):
            started.set_arg(index, value)
        started.start()
        return started

    # -- argument checks -------------------------------------------------------

    def _check_bo(self, value: Any, name: str, flags: BOFlags, group: int) -> bo:
        if not isinstance(value, bo):
            raise _rule(f"argument {name!r} is a {type(value).__name__}", "a bo", "Pass a bo.")
        if value._storage.state is not self._ctx._state:
            raise _rule(
                f"BO {name!r} belongs to another device",
                "BOs of the kernel's device",
                "Allocate the BO on the device of the kernel's hw_context.",
            )
        if value._flags != flags:
            raise _rule(
                f"BO {name!r} has flags {value._flags.name}",
                f"{flags.name} ({'instructions' if name == 'instr' else 'data'})",
                f"Allocate it with bo.{flags.name}.",
            )
        if value._group != group:
            raise _rule(
                f"BO {name!r} is in memory group {value._group}",
                f"group {group}, kernel.group_id({self._contract.arguments.index(name)})",
                "Allocate the BO with the kernel's group_id for that argument.",
            )
        return value

    def _launch(self, target: run, args: list[Any]) -> Launch:
        """Check a run's arguments, decode its instructions and claim its buffers."""
        contract, state = self._contract, self._ctx._state
        state.check_alive("start")
        names = contract.arguments
        if len(args) != len(names) or any(a is None for a in args):
            raise _rule(
                f"{sum(a is not None for a in args)} of {len(names)} arguments set",
                f"all of {list(names)}",
                "Call kernel(opcode, instr_bo, n_insts, *data_bos).",
            )
        opcode, instr, n_insts, *data = args
        if opcode != contract.opcode:
            raise _rule(f"opcode {opcode!r}", f"{contract.opcode}", "Pass the contract's opcode.")
        instr = self._check_bo(instr, "instr", BOFlags.cacheable, contract.instr_group_id)
        buffers = {
            spec.name: self._check_bo(value, spec.name, BOFlags.host_only, spec.group_id)
            for spec, value in zip(contract.buffers, data, strict=True)
        }
        n_words = int(n_insts) if contract.instr_count_unit == "words" else int(n_insts) // 4
        if not 0 < 4 * n_words <= instr.size():
            raise _rule(
                f"n_insts={n_insts} ({contract.instr_count_unit})",
                f"a count within the instruction BO's {instr.size()} bytes",
                "Pass the length of the instruction stream.",
            )
        stream = self._decode(instr, n_words, int(n_insts))
        needs = contract.run_buffer_bytes(stream.block) if stream else {}
        for name, buf in buffers.items():
            if buf.size() < needs.get(name, 0):
                raise _rule(
                    f"BO {name!r} has {buf.size()} bytes",
                    f"at least {needs[name]} bytes for the block in the instructions",
                    "Allocate buffers for the block shape the instruction stream names.",
                )
        index, fault = state.faults.number_run()
        # Bytes the run touches: what its block needs (the whole BO if undecodable).
        used = {name: needs.get(name, buf.size()) for name, buf in buffers.items()}
        used["instr"] = 4 * n_words
        bos = {**buffers, "instr": instr}
        output = contract.output_buffer.name
        uses = [self._use(bos[n], used[n], n == output, index) for n in bos]
        views = {
            name: buf._storage.device[buf._offset : buf._offset + used[name]]
            for name, buf in buffers.items()
        }
        claim(uses)
        return Launch(
            run=target,
            index=index,
            fault=fault,
            contract=contract,
            stream=stream,
            views=views,
            uses=uses,
            submitted_at=time.perf_counter(),
        )

    def _use(self, buf: bo, nbytes: int, writes: bool, index: int) -> Use:
        storage, start = buf._storage, buf._offset
        crc = None
        if storage.mapped and storage.state.detect_mapped_writes:
            crc = storage.crc(start, start + nbytes)
        return Use(storage, start, start + nbytes, writes, index, crc)

    def _decode(self, instr: bo, n_words: int, n_insts: int) -> InstructionStream | None:
        """The stream in the instruction BO's device copy, or None if the firmware would fail it."""
        contract, state = self._contract, self._ctx._state
        words = instr._storage.device[instr._offset : instr._offset + 4 * n_words].view("<u4")
        try:
            stream = decode(words)
            contract.check_block(stream.block, stream.generation)
        except (MalformedInstructions, ContractError):
            return None
        matches = (
            stream.semantic == contract.semantic
            and stream.layout == contract.layout
            and stream.generation == state.generation
            and n_insts == instruction_count(contract, WORDS)
        )
        return stream if matches else None


class run:
    """One execution of a kernel: ``run(kernel)``, ``set_arg``, ``start``, ``wait``, ``state``.

    A run in flight reports ``ERT_CMD_STATE_NEW``. ``wait(timeout_ms)``
    returns ``ERT_CMD_STATE_TIMEOUT`` if the run is still in flight after
    ``timeout_ms`` (it keeps running); ``wait()`` or ``wait(0)`` waits for
    the end. A run during which the host bytes of a mapped BO it uses
    changed ends in ``ERT_CMD_STATE_ERROR`` and its ``wait`` raises
    ``BufferHazardError`` (see docs/emulator.md).
    """

    def __init__(self, k: kernel) -> None:
        self._kernel = k
        self._args: list[Any] = [None] * len(k._contract.arguments)
        self._state = NEW
        self._hazard: str | None = None
        self._done = threading.Event()
        self._done.set()  # a run never started has nothing to wait for

    def set_arg(self, index: int, value: Any) -> None:
        """Set argument ``index`` (a BO or an int)."""
        if not 0 <= index < len(self._args):
            raise _rule(
                f"argument index {index}",
                f"0..{len(self._args) - 1}",
                "Pass the contract's arguments in order.",
            )
        self._args[index] = value

    def start(self) -> None:
        """Start the run; blocks while the context has its maximum of runs in flight."""
        launch = self._prepare()
        self._submit(Command([launch]))

    def wait(self, timeout_ms: int | None = None) -> ert_cmd_state:
        """Wait for the run's end, at most ``timeout_ms`` ms (None or 0: no limit)."""
        if timeout_ms:
            if not self._done.wait(int(timeout_ms) / 1000):
                return TIMEOUT
        else:
            self._done.wait()
        if self._hazard is not None:
            raise BufferHazardError(self._hazard)
        return self._state

    def state(self) -> ert_cmd_state:
        """The run's current state, without waiting."""
        return self._state

    # -- used by kernel, runlist and the device thread ------------------------

    def _prepare(self) -> Launch:
        if not self._done.is_set():
            raise _rule(
                "start() of a run that is in flight",
                "a run that has not started or has ended",
                "Wait for it first, or create another run.",
            )
        launch = self._kernel._launch(self, self._args)
        self._state, self._hazard = NEW, None
        self._done.clear()
        return launch

    def _submit(self, command: Command) -> None:
        try:
            self._kernel._ctx._queue.submit(command)
        except BaseException:
            command.finish_all(ert_cmd_state.ERT_CMD_STATE_ABORT)
            raise

    def _finish(self, launch: Launch, state: ert_cmd_state) -> None:
        """End the run (device thread): check for mapped writes, release its buffers."""
        changed = [use for use in launch.uses if use.host_changed()]
        release(launch.uses)
        if changed:
            use = changed[0]
            self._hazard = explain(
                f"run #{launch.index} ended in ERT_CMD_STATE_ERROR: host bytes "
                f"[{use.start}, {use.end}) of a BO it {use.verb} changed while it was in "
                "flight (a write through a map() view)",
                "no host write to a BO range until every run using it has completed",
                "Wait for the run before packing the next batch into its buffers.",
            )
            state = ert_cmd_state.ERT_CMD_STATE_ERROR
        self._state = state
        self._done.set()


class runlist:
    """``runlist(hw_context)``: up to 24 runs chained into one command (one in-flight slot)."""

    def __init__(self, hwctx: hw_context) -> None:
        self._ctx = hwctx
        self._runs: list[run] = []
        self._command: Command | None = None

    def add(self, r: run) -> None:
        """Append a run (not in flight, of a kernel in this context)."""
        if r._kernel._ctx is not self._ctx:
            raise _rule(
                "a run of another hw_context",
                "runs of kernels of the runlist's hw_context",
                "Create the run from a kernel of this context.",
            )
        if len(self._runs) >= RUNLIST_MAX:
            raise _rule(f"a {RUNLIST_MAX + 1}th run", f"at most {RUNLIST_MAX}", "Use two runlists.")
        self._runs.append(r)

    def execute(self) -> None:
        """Start every run of the list as one command."""
        if not self._runs:
            raise _rule("execute() of an empty runlist", "at least one run", "add() runs first.")
        launches: list[Launch] = []
        try:
            for r in self._runs:
                launches.append(r._prepare())
        except BaseException:
            Command(launches).finish_all(ert_cmd_state.ERT_CMD_STATE_ABORT)
            raise
        self._command = Command(launches)
        self._runs[0]._submit(self._command)

    def wait(self, timeout: int | None = None) -> ert_cmd_state | None:
        """Wait for every run.

        With ``timeout`` (ms): return ``ERT_CMD_STATE_TIMEOUT`` if not done,
        else the state of the first run that did not complete (or COMPLETED).
        Without: return None, or raise DeviceError naming the failed run.
        """
        if self._command is None:
            return None if timeout is None else COMPLETED
        if timeout and not self._command.done.wait(int(timeout) / 1000):
            return TIMEOUT
        self._command.done.wait()
        states = [r.wait() for r in self._runs]
        failed = next(((i, s) for i, s in enumerate(states) if s != COMPLETED), None)
        if timeout:
            return COMPLETED if failed is None else failed[1]
        if failed is not None:
            raise DeviceError(
                explain(
                    f"runlist run {failed[0]} ended in {failed[1].name}",
                    "every run COMPLETED",
                    "See the run's state; later runs of the list were aborted.",
                ),
                state=failed[1].name,
            )
        return None
