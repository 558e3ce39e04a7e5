"""``pyxrt.kernel``, ``pyxrt.run`` and ``pyxrt.runlist``, with the driver's argument checks.

Starting a run checks its arguments against the kernel contract the way the
driver and firmware would, and raises ``DriverRuleError`` (a RuntimeError,
like real pyxrt) for: a wrong argument count or opcode, an instruction BO that
is not ``cacheable`` or not in the instruction group, a data BO that is not
``host_only`` or in the wrong group, an instruction count that is not a
positive integer, or a data BO too small for the block the instructions name.

The block shape is read from the instruction BO's *device copy*: a stream
that does not decode (never synced, corrupted, built for another contract or
NPU generation) is not refused at start; the run ends in
``ERT_CMD_STATE_ERROR``, as the firmware fails it on hardware. A count that
does not match the stream (the other unit, or a wrong length) completes with
nothing computed (``_instructions.Firmware``).

What the checks cost is kept off the per-run path without skipping any: a
run's argument checks (count, opcode, each BO's flags, group, device and the
instruction count's range) depend only on its arguments, which only
``set_arg`` changes, so a run started again with the same arguments (a
re-executed runlist) is not checked twice; the decoded stream of an
instruction BO is reused while its device copy is unchanged (every
``sync(TO_DEVICE)`` invalidates it); block legality and bytes per buffer are
computed once per block shape.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import numpy as np

from npu_pipeline.emulator import _gil
from npu_pipeline.emulator._buffers import Storage, Use, bo, claim, release
from npu_pipeline.emulator._device import hw_context
from npu_pipeline.emulator._enums import BOFlags, ert_cmd_state
from npu_pipeline.emulator._instructions import WORDS, InstructionStream
from npu_pipeline.emulator._queue import Command, Launch
from npu_pipeline.errors import (
    BufferHazardError,
    ContractError,
    DeviceError,
    DriverRuleError,
    explain,
)

#: Runs one runlist chains into one command (up to 24, docs/hardware-facts.md#runlists).
RUNLIST_MAX = 24

NEW = ert_cmd_state.ERT_CMD_STATE_NEW
TIMEOUT = ert_cmd_state.ERT_CMD_STATE_TIMEOUT
COMPLETED = ert_cmd_state.ERT_CMD_STATE_COMPLETED
ABORT = ert_cmd_state.ERT_CMD_STATE_ABORT

#: What XRT's hw_queue throws when the driver signals a command it left in NEW
#: (Xilinx/XRT src/runtime_src/core/common/api/hw_queue.cpp, qds_device::wait).
UNEXPECTED_STATE = "qds_device::wait() unexpected command state"


def _unexpected_state(what: str) -> DeviceError:
    return DeviceError(
        explain(
            f"{what} raised: {UNEXPECTED_STATE} (the driver's reset left the command in "
            "ERT_CMD_STATE_NEW, as older amdxdna drivers do)",
            "a command the driver ended in a final state",
            "Treat the command as failed, drop the objects bound to the context and "
            "recreate the hw_context; upgrading the amdxdna driver avoids it.",
        )
    )


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
        contract = self._contract = ctx.get_xclbin().contract
        if name != contract.kernel_name:
            raise _rule(
                f"no kernel {name!r} in the xclbin",
                f"{contract.kernel_name!r}",
                "Use a name from xclbin.get_kernels().",
            )
        # What every start needs of the contract, computed once.
        self._n_args = len(contract.arguments)
        output = contract.output_buffer.name
        self._data = tuple((spec.name, spec.name == output) for spec in contract.buffers)
        # block -> bytes of each data buffer one run of it uses, in argument order.
        self._needs: dict[tuple[int, int, int], tuple[int, ...]] = {}
        # (block, generation) -> whether the contract allows it.
        self._legal: dict[tuple[tuple[int, int, int], str], bool] = {}
        # instruction BO storage -> {(offset, n_words, n_insts): (device_version, stream)}.
        self._streams: weakref.WeakKeyDictionary[
            Storage, dict[tuple[int, int, int], tuple[int, InstructionStream | None]]
        ] = weakref.WeakKeyDictionary()

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

    def _check_args(self, args: list[Any]) -> None:
        """Every check that depends only on a run's arguments (BOs never change flags,
        group, device or size, so these hold until ``set_arg`` is called again)."""
        contract = self._contract
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
        self._check_bo(instr, "instr", BOFlags.cacheable, contract.instr_group_id)
        for spec, value in zip(contract.buffers, data, strict=True):
            self._check_bo(value, spec.name, BOFlags.host_only, spec.group_id)
        # The count is a plain scalar to XRT and the driver: only the firmware
        # reads it, and a wrong one is played there (_instructions.Firmware).
        if isinstance(n_insts, bool) or not isinstance(n_insts, int | np.integer) or n_insts < 1:
            raise _rule(
                f"n_insts={n_insts!r}",
                "a positive integer count of the instruction stream",
                "Pass the length of the instruction stream.",
            )

    def _launch(self, target: run) -> Launch:
        """Check a run's arguments, decode its instructions and claim its buffers."""
        state = self._ctx._state
        state.check_alive("start")
        args = target._args
        if not target._checked:
            self._check_args(args)
            target._checked, target._plan = True, None
        n_insts = int(args[2])
        stream = self._decode(args[1], n_insts)
        plan = target._plan
        if plan is None or plan[0] is not stream:
            plan = target._plan = self._plan(args, stream)
        _, views, uses = plan
        index, fault = state.faults.number_run()
        watch = state.detect_mapped_writes
        for use in uses:  # the run's last launch has ended: its uses are free to reuse
            use.run_index = index
            # Inputs only: a host write into an input in flight changes what the
            # run reads (silently, on hardware); one into an output is overwritten
            # by the run's result at the output sync. Outputs are the largest
            # buffers, and watching them would double the cost of every check.
            if watch and use.storage.mapped and not use.writes:
                use.watch()
            else:
                use.watched = False
        claim(uses)
        if watch:  # what the host reads of a mapped output in flight is undefined
            for use in uses:
                if use.writes and use.storage.mapped:
                    use.poison()
        return Launch(
            run=target,
            index=index,
            fault=fault,
            contract=self._contract,
            stream=stream,
            views=views,
            uses=uses,
            submitted_at=time.perf_counter(),
        )

    def _plan(
        self, args: list[Any], stream: InstructionStream | None
    ) -> tuple[InstructionStream | None, dict[str, Any], list[Use]]:
        """What a run with these (checked) arguments and this stream touches.

        Checks that every data BO holds the block the stream names; returns
        the stream, a view of each buffer's device copy and the byte ranges
        (uses) the run holds in flight: what its block needs, the whole BO if
        the stream is undecodable. Kept by the run while both are unchanged.
        """
        data = args[3:]
        if stream is not None:
            needs = self._needs.get(stream.block)
            if needs is None:
                per_name = self._contract.run_buffer_bytes(stream.block)
                needs = self._needs[stream.block] = tuple(per_name[n] for n, _ in self._data)
            for (name, _), buf, need in zip(self._data, data, needs, strict=True):
                if buf._size < need:
                    raise _rule(
                        f"BO {name!r} has {buf._size} bytes",
                        f"at least {need} bytes for the block in the instructions",
                        "Allocate buffers for the block shape the instruction stream names.",
                    )
        else:
            needs = tuple(buf._size for buf in data)
        uses = []
        views = {}
        for (name, writes), buf, need in zip(self._data, data, needs, strict=True):
            storage, begin = buf._storage, buf._offset
            uses.append(Use(storage, begin, begin + need, writes, -1))
            views[name] = storage.device[begin : begin + need]
        instr = args[1]
        begin = instr._offset
        uses.append(Use(instr._storage, begin, begin + min(4 * WORDS, instr._size), False, -1))
        return stream, views, uses

    def _decode(self, instr: bo, n_insts: int) -> InstructionStream | None:
        """The stream in the instruction BO's device copy, or None if the firmware would fail it.

        Cached per instruction BO range while its device copy is unchanged.
        """
        storage = instr._storage
        version = storage.device_version  # read before the bytes: a racing sync invalidates
        key = (instr._offset, instr._size, n_insts)
        cache = self._streams.get(storage)
        if cache is not None:
            hit = cache.get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
        else:
            cache = self._streams[storage] = {}
        stream = self._decode_words(storage, instr._offset, instr._size, n_insts)
        if len(cache) >= 64:
            cache.clear()
        cache[key] = (version, stream)
        return stream

    def _decode_words(
        self, storage: Storage, offset: int, size: int, n_insts: int
    ) -> InstructionStream | None:
        contract, state = self._contract, self._ctx._state
        stream = state.firmware.read(
            storage.device[offset : offset + size], n_insts, state.generation
        )
        if stream is None or not self._is_legal(stream.block, stream.generation):
            return None
        matches = stream.semantic == contract.semantic and stream.layout == contract.layout
        return stream if matches else None

    def _is_legal(self, block: tuple[int, int, int], generation: str) -> bool:
        key = (block, generation)
        legal = self._legal.get(key)
        if legal is None:
            try:
                self._contract.check_block(block, generation)
                legal = True
            except ContractError:
                legal = False
            self._legal[key] = legal
        return legal


class run:
    """One execution of a kernel: ``run(kernel)``, ``set_arg``, ``start``, ``wait``, ``state``.

    A run in flight reports ``ERT_CMD_STATE_NEW``; so does a run of a runlist
    until ``runlist.wait`` marks it (see :class:`runlist`). ``wait(timeout_ms)``
    returns ``ERT_CMD_STATE_TIMEOUT`` if the run is still in flight after
    ``timeout_ms`` (it keeps running); ``wait()`` or ``wait(0)`` waits for
    the end. A run during which the host bytes of a mapped BO it uses
    changed ends in ``ERT_CMD_STATE_ERROR`` and its ``wait`` raises
    ``BufferHazardError`` (see docs/emulator.md).
    """

    def __init__(self, k: kernel) -> None:
        self._kernel = k
        self._args: list[Any] = [None] * k._n_args
        self._checked = False  # the arguments passed kernel._check_args since the last set_arg
        self._plan: tuple | None = None  # kernel._plan of the checked arguments
        self._runlist: runlist | None = None  # the runlist it belongs to, if any
        self._state = NEW
        self._final = NEW  # how the device ended it (state() shows it unless in a runlist)
        self._hazard: str | None = None
        self._why: str | None = None  # why it failed, when the reason is its context's
        self._stale = False  # ended by a reset that left it NEW (reset_leaves_new)
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
        self._checked = False

    def start(self) -> None:
        """Start the run; blocks while the context has its maximum of runs in flight."""
        if self._runlist is not None:
            raise _rule(
                "start() of a run that belongs to a runlist",
                "runs of a runlist started only by runlist.execute()",
                "Execute the runlist, or create a separate run.",
            )
        launch = self._prepare()
        self._submit(Command([launch]))

    def wait(self, timeout_ms: int | None = None) -> ert_cmd_state:
        """Wait for the run's end, at most ``timeout_ms`` ms (None or 0: no limit)."""
        ctx = self._kernel._ctx
        timeout_s = int(timeout_ms) / 1000 if timeout_ms else None
        if not _gil.wait(self._done, ctx._queue, timeout_s, ctx._state.hold_gil):
            return TIMEOUT
        if self._stale:
            raise _unexpected_state("run.wait()")
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
        launch = self._kernel._launch(self)
        self._state = self._final = NEW
        self._hazard = self._why = None
        self._stale = False
        self._done.clear()
        return launch

    def _submit(self, command: Command) -> None:
        ctx = self._kernel._ctx
        try:
            if ctx._state.hold_gil:
                _gil.wait_for_room(ctx._queue, ctx._state.runs_in_flight)
            ctx._queue.submit(command)
        except BaseException:
            command.finish_all(ert_cmd_state.ERT_CMD_STATE_ABORT)
            raise

    def _finish(
        self, launch: Launch, state: ert_cmd_state, checked: bool = False, stale: bool = False
    ) -> ert_cmd_state:
        """End the run (device thread): ``_end`` it, then ``_signal`` its final state."""
        final = self._end(launch, state, checked, stale)
        self._signal()
        return final

    def _end(
        self, launch: Launch, state: ert_cmd_state, checked: bool = False, stale: bool = False
    ) -> ert_cmd_state:
        """Check for mapped writes and release the run's buffers; return its final state.

        The final state is ``ERT_CMD_STATE_ERROR`` if the host wrote a mapped
        BO of the run while it was in flight. ``checked``: the caller has just
        found no such write. ``state()`` reports it from now on, unless the
        run belongs to a runlist (the driver updates only the chain's command,
        XRT only the runs ``runlist.wait`` marks) or ``stale`` (a reset of an
        older driver left the command NEW); ``wait`` returns once ``_signal``
        is called.
        """
        changed = [] if checked else [use for use in launch.watched if use.host_changed()]
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
        self._final, self._stale = state, stale
        if self._runlist is None and not stale:
            self._state = state
        return state

    def _signal(self) -> None:
        """Wake the run's waiters (its final state was set by ``_end``)."""
        self._done.set()


class runlist:
    """``runlist(hw_context)``: up to 24 runs chained into one command (one in-flight slot).

    As in XRT: a run belongs to at most one runlist, once; runs of a runlist
    are started only by ``execute()``; nothing may be added and the list may
    not be executed again while it executes; after ``wait`` it may be
    executed again (its runs are started again with their current arguments).

    As pyxrt binds it (Xilinx/XRT ``src/python/pybind11/src/pyxrt.cpp``),
    only the untimed ``wait()`` can be called: the timed overload takes a
    ``std::chrono::milliseconds`` that no Python value converts to, so
    ``wait(timeout)`` raises TypeError. As the driver and XRT report a chain
    (amdxdna ``aie2_sched_cmdlist_resp_handler``, XRT ``runlist_impl::wait``),
    the runs' own states stay ``NEW``: a failed ``wait`` marks the failed run
    with the chain's state and the later runs ``ABORT``, and leaves the runs
    before it ``NEW``.
    """

    def __init__(self, hwctx: hw_context) -> None:
        self._ctx = hwctx
        self._runs: list[run] = []
        self._command: Command | None = None
        self._stuck = False  # a wait raised "unexpected command state": never idle again

    def _executing(self) -> bool:
        return self._stuck or (self._command is not None and not self._command.done.is_set())

    def add(self, r: run) -> None:
        """Append a run (not in flight, of a kernel in this context, in no other runlist)."""
        if r._kernel._ctx is not self._ctx:
            raise _rule(
                "a run of another hw_context",
                "runs of kernels of the runlist's hw_context",
                "Create the run from a kernel of this context.",
            )
        if r._runlist is not None:
            raise _rule(
                "a run that already belongs to a runlist",
                "each run added to one runlist, once",
                "Create another run.",
            )
        if self._executing():
            raise _rule(
                "add() to a runlist that is executing (XRT: runlist must be idle)",
                "an idle runlist",
                "wait() for the runlist first.",
            )
        if len(self._runs) >= RUNLIST_MAX:
            raise _rule(f"a {RUNLIST_MAX + 1}th run", f"at most {RUNLIST_MAX}", "Use two runlists.")
        r._runlist = self
        self._runs.append(r)

    def execute(self) -> None:
        """Start every run of the list as one command."""
        if not self._runs:
            raise _rule("execute() of an empty runlist", "at least one run", "add() runs first.")
        if self._executing():
            raise _rule(
                "execute() of a runlist that is executing (XRT: runlist must be idle)",
                "an idle runlist",
                "wait() for the runlist first; a runlist whose wait raised "
                "'unexpected command state' stays running: make a new one.",
            )
        launches: list[Launch] = []
        try:
            for r in self._runs:
                launches.append(r._prepare())
        except BaseException:
            Command(launches).finish_all(ert_cmd_state.ERT_CMD_STATE_ABORT)
            raise
        self._command = Command(launches, threading.Event())
        self._runs[0]._submit(self._command)

    def wait(self, *args: Any, **kwargs: Any) -> None:
        """Wait for every run; raise if one did not complete, as XRT does.

        Once the list ended with a run that did not complete: that run gets
        its state, the later runs ``ABORT``; then raise ``BufferHazardError``
        if the host wrote a mapped BO of that run while it was in flight, else
        ``DeviceError`` ("runlist failed execution (<state>)", as XRT's
        ``runlist::command_error``). The list is idle again either way.

        Raises:
            TypeError: any argument (pyxrt's timed overload cannot be called).
        """
        if args or kwargs:
            given = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
            raise TypeError(
                "wait(): incompatible function arguments. The following argument types "
                "are supported:\n    1. (self: pyxrt.runlist) -> None\n    2. (self: "
                "pyxrt.runlist, timeout: std::chrono::duration<long, std::ratio<1l, "
                f"1000l> >) -> std::cv_status\n\nInvoked with: {self!r}, {given}"
            )
        command = self._command
        if command is None:
            return
        _gil.wait(command.done, self._ctx._queue, None, self._ctx._state.hold_gil)
        if any(launch.run._stale for launch in command.launches):
            self._stuck = True  # XRT's wait threw before the list became idle
            raise _unexpected_state("runlist.wait()")
        self._command = None
        if command.failed is None:
            return
        failed = self._runs[command.failed]
        failed._state = failed._final
        for later in self._runs[command.failed + 1 :]:
            later._state = ABORT
        if failed._hazard is not None:
            raise BufferHazardError(failed._hazard)
        raise DeviceError(
            explain(
                f"runlist failed execution ({failed._state.name}): run {command.failed} "
                f"of the list failed" + (f"; {failed._why}" if failed._why else ""),
                "every run COMPLETED",
                "The runs before it are left NEW and the later ones ABORT, as XRT "
                "reports them; see each run's state().",
            )
        )
