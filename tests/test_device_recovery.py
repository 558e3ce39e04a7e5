"""Runlists, the watchdog and recovery, as strict as pyxrt and the amdxdna driver.

The pyxrt-level tests play what docs/emulator.md describes: a timed
``runlist.wait`` is a TypeError (pyxrt binds it with ``std::chrono`` and no
caster), a failed chain leaves the runs before the failed one NEW, the
watchdog checks the whole device and restarts every context, a context whose
run failed is out of step until it is recreated, and an older driver leaves a
reset command NEW. The device and pipeline tests show that NpuDevice and the
pipeline survive each of them with exact results and nothing leaked.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from conftest import random_int8
from test_pipeline import concurrent_requests

from npu_pipeline import emulator as xrt
from npu_pipeline.contract import load_contract
from npu_pipeline.errors import DeviceError, DriverRuleError

GEMM = load_contract("gemm_i8_i32")
TO = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
FROM = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
S = xrt.ert_cmd_state
BLOCK = (256, 64, 256)  # the smallest legal gemm_i8_i32 block on npu1
OTHER = (256, 128, 256)  # a second legal block, for a timing model that tells them apart


# Every test must leave no device thread and no BO behind, whatever happened.
pytestmark = pytest.mark.usefixtures("no_emulator_leaks")


class Context:
    """One hardware context of an open emulated device, with its kernel."""

    def __init__(self, dev: xrt.device) -> None:
        self.dev = dev
        self.ctx = xrt.hw_context(dev, dev.register_xclbin(xrt.xclbin(GEMM)))
        self.kernel = xrt.kernel(self.ctx, GEMM.kernel_name)
        self._instr: dict = {}

    def bo(self, arg: int, payload: np.ndarray | None = None, nbytes: int = 0):
        bo = xrt.bo(
            self.dev,
            nbytes or payload.nbytes,
            xrt.bo.cacheable if arg == 1 else xrt.bo.host_only,
            self.kernel.group_id(arg),
        )
        if payload is not None:
            bo.write(payload, 0)
            bo.sync(TO, bo.size(), 0)
        return bo

    def instr(self, block):
        if block not in self._instr:
            words = xrt.instructions(GEMM, block, "npu1")
            self._instr[block] = (self.bo(1, words), len(words))
        return self._instr[block]

    def run(self, a: np.ndarray, b: np.ndarray):
        """An unstarted run of a @ b with its arguments set; (run, output BO)."""
        (m, k), n = a.shape, b.shape[1]
        out = self.bo(5, nbytes=m * n * 4)
        run = xrt.run(self.kernel)
        for i, value in enumerate((3, *self.instr((m, k, n)), self.bo(3, a), self.bo(4, b), out)):
            run.set_arg(i, value)
        return run, out

    def start(self, a, b):
        run, out = self.run(a, b)
        run.start()
        return run, out

    def chain(self, pairs):
        """A runlist of one run per (a, b); (runlist, runs, output BOs)."""
        chain, runs, outs = xrt.runlist(self.ctx), [], []
        for a, b in pairs:
            run, out = self.run(a, b)
            chain.add(run)
            runs.append(run)
            outs.append(out)
        return chain, runs, outs


def product(out, a, b) -> np.ndarray:
    m, n = a.shape[0], b.shape[1]
    out.sync(FROM, m * n * 4, 0)
    return out.read(m * n * 4, 0).view(np.int32).reshape(m, n)


def assert_exact(out, a, b) -> None:
    np.testing.assert_array_equal(product(out, a, b), a.astype(np.int64) @ b.astype(np.int64))


@contextlib.contextmanager
def device(**options):
    dev = xrt.device(0, **options)
    try:
        yield dev
    finally:
        dev.close()


def operands(rng, block=BLOCK):
    m, k, n = block
    return random_int8(rng, (m, k)), random_int8(rng, (k, n))


# -- finding 2: runlists -------------------------------------------------------------


def test_timed_runlist_wait_is_a_type_error_as_in_pyxrt(rng):
    """pyxrt binds runlist.wait(std::chrono::milliseconds) without pybind11/chrono.h:
    no Python value converts, so every timed call fails overload resolution."""
    a, b = operands(rng)
    with device() as dev:
        ctx = Context(dev)
        chain, _, outs = ctx.chain([(a, b)] * 2)
        chain.execute()
        for args, kwargs in (((5000,), {}), ((), {"timeout": 5}), ((0.5,), {})):
            with pytest.raises(TypeError, match="incompatible function arguments"):
                chain.wait(*args, **kwargs)
        assert chain.wait() is None
        for out in outs:
            assert_exact(out, a, b)


def test_runs_of_a_chain_keep_state_new_unless_xrt_marks_them(rng):
    """The driver records only the failing index of a chain; XRT's wait marks that run
    and aborts the later ones. Runs before it, and every run of a chain that completed,
    are never updated: they stay NEW."""
    a, b = operands(rng)
    with device(faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=5)]) as dev:
        ctx = Context(dev)
        chain, runs, outs = ctx.chain([(a, b)] * 3)
        chain.execute()
        assert chain.wait() is None
        assert [run.state() for run in runs] == [S.ERT_CMD_STATE_NEW] * 3
        for out in outs:
            assert_exact(out, a, b)
        chain, runs, outs = ctx.chain([(a, b)] * 4)  # runs 3..6: run 5 fails
        chain.execute()
        with pytest.raises(DeviceError, match=r"runlist failed execution \(ERT_CMD_STATE_ERROR\)"):
            chain.wait()
        assert [run.state() for run in runs] == [
            S.ERT_CMD_STATE_NEW,
            S.ERT_CMD_STATE_NEW,
            S.ERT_CMD_STATE_ERROR,
            S.ERT_CMD_STATE_ABORT,
        ]
        for out in outs[:2]:
            assert_exact(out, a, b)


# -- finding 4: the watchdog, out-of-step contexts, stale reset states ----------------


def test_watchdog_fires_one_to_two_periods_after_the_last_progress(rng):
    """A hang alone on the device: TIMEOUT between one and two periods after it started."""
    a, b = operands(rng)
    period = 0.2
    with device(watchdog_s=period, faults=[xrt.Fault(xrt.FaultKind.HANG, run_index=0)]) as dev:
        ctx = Context(dev)
        began = time.perf_counter()
        hung, _ = ctx.start(a, b)
        assert hung.wait() == S.ERT_CMD_STATE_TIMEOUT
        assert period <= time.perf_counter() - began < 2 * period + 0.15


def test_watchdog_checks_the_whole_device(rng):
    """A context that keeps completing runs keeps the watchdog from firing on another
    context's hang: it fires only a period after the device's last progress."""
    a, b = operands(rng)
    period = 0.2
    options = {"watchdog_s": period, "timing": lambda contract, block: 0.05}
    with device(**options, faults=[xrt.Fault(xrt.FaultKind.HANG, run_index=0)]) as dev:
        hanging, busy = Context(dev), Context(dev)
        hung, _ = hanging.start(a, b)
        last_end = time.perf_counter()
        for _ in range(10):  # 0.5 s of progress, more than two periods
            run, out = busy.start(a, b)
            assert run.wait() == S.ERT_CMD_STATE_COMPLETED
            last_end = time.perf_counter()
            assert hung.state() == S.ERT_CMD_STATE_NEW
        assert_exact(out, a, b)
        assert hung.wait() == S.ERT_CMD_STATE_TIMEOUT
        assert time.perf_counter() - last_end >= period - 0.01


def test_watchdog_recovery_fails_every_contexts_runs_in_flight(rng):
    """The watchdog restarts every context: the hung run ends in TIMEOUT, every other run
    in flight on any context in ABORT, and every context is then out of step."""
    a, b = operands(rng)
    c, d = operands(rng, OTHER)
    seconds = {BLOCK: 5.0, OTHER: 0.01}  # BLOCK runs last longer than the watchdog
    options = {"watchdog_s": 0.2, "timing": lambda contract, block: seconds[block]}
    with device(**options, faults=[xrt.Fault(xrt.FaultKind.HANG, run_index=0)]) as dev:
        hanging, other = Context(dev), Context(dev)
        hung, _ = hanging.start(c, d)
        queued, _ = hanging.start(c, d)
        time.sleep(0.05)
        long_run, _ = other.start(a, b)  # executing when the watchdog fires
        queued_other, _ = other.start(c, d)
        assert hung.wait() == S.ERT_CMD_STATE_TIMEOUT
        assert [r.wait() for r in (queued, long_run, queued_other)] == [S.ERT_CMD_STATE_ABORT] * 3
        for stale in (hanging, other):
            assert "Recreate the hw_context" in stale.ctx.out_of_step
            run, _ = stale.start(c, d)
            assert run.wait() == S.ERT_CMD_STATE_ERROR
        fresh = Context(dev)
        assert fresh.ctx.out_of_step is None
        run, out = fresh.start(c, d)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        assert_exact(out, c, d)


@pytest.mark.parametrize("kind", ["ERROR", "HANG"])
def test_a_failed_run_leaves_its_context_out_of_step_until_recreated(rng, kind):
    """The design's cores loop forever: after a run fails they are out of step with the
    host, so every later run on that context fails until a new context is made."""
    a, b = operands(rng)
    options = {"watchdog_s": 0.1, "faults": [xrt.Fault(xrt.FaultKind[kind], run_index=0)]}
    with device(**options) as dev:
        ctx = Context(dev)
        failed, _ = ctx.start(a, b)
        assert failed.wait() in (S.ERT_CMD_STATE_ERROR, S.ERT_CMD_STATE_TIMEOUT)
        assert "out of step" in ctx.ctx.out_of_step
        run, out = ctx.start(a, b)
        assert run.wait() == S.ERT_CMD_STATE_ERROR
        assert not product(out, a, b).any()
        chain, _, _ = ctx.chain([(a, b)])
        chain.execute()
        with pytest.raises(DeviceError, match="out of step"):
            chain.wait()
        fresh = Context(dev)
        run, out = fresh.start(a, b)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        assert_exact(out, a, b)


def test_older_driver_leaves_a_reset_command_new(rng):
    """reset_leaves_new plays an older driver: a command ended by the watchdog's reset
    keeps state NEW, and XRT's wait throws 'unexpected command state'; a runlist whose
    wait threw stays running, so it can never be executed again."""
    a, b = operands(rng)
    options = {"watchdog_s": 0.1, "reset_leaves_new": True}
    with device(**options, faults=[xrt.Fault(xrt.FaultKind.HANG, run_index=0)]) as dev:
        ctx = Context(dev)
        hung, _ = ctx.start(a, b)
        with pytest.raises(RuntimeError, match="unexpected command state"):
            hung.wait()
        assert hung.state() == S.ERT_CMD_STATE_NEW
        with pytest.raises(RuntimeError, match="unexpected command state"):
            hung.wait(5)
        fresh = Context(dev)
        xrt.inject_fault(dev, xrt.FaultKind.HANG)
        chain, runs, _ = fresh.chain([(a, b)] * 2)
        chain.execute()
        with pytest.raises(RuntimeError, match="unexpected command state"):
            chain.wait()
        assert [run.state() for run in runs] == [S.ERT_CMD_STATE_NEW] * 2
        with pytest.raises(DriverRuleError, match="must be idle"):
            chain.execute()


# -- the device layer and the pipeline survive them -----------------------------------


def open_npu(**options):
    from npu_pipeline.device import NpuDevice

    return NpuDevice.open(GEMM, device="emulator", **options)


def gemm_start(npu, slot, rng, n_runs=1, **ids):
    """Pack ``n_runs`` random BLOCK runs into ``slot`` and start them; (submission, pairs)."""
    m, k, n = BLOCK
    pairs = [operands(rng) for _ in range(n_runs)]
    for i, (a, b) in enumerate(pairs):
        slot.view("a", np.int8)[i * m * k : (i + 1) * m * k] = a.ravel()
        slot.view("b", np.int8)[i * k * n : (i + 1) * k * n] = b.ravel()
    return npu.start(slot, BLOCK, n_runs=n_runs, **ids), pairs


def assert_slot_exact(slot, pairs, skip=()) -> None:
    m, _, n = BLOCK
    c = slot.view("c")
    for i, (a, b) in enumerate(pairs):
        if i not in skip:
            got = c[i * m * n : (i + 1) * m * n].reshape(m, n)
            np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_real_xrt_defaults_to_single_runs_and_says_why():
    from npu_pipeline.device.discovery import chaining

    assert chaining(None, "emulator", True)[0]
    chained, why = chaining(None, "xrt", True)
    assert not chained and "not been shown correct on hardware" in why
    assert chaining(True, "xrt", True) == (True, "runlists=True was requested")
    assert not chaining(True, "xrt", False)[0]
    with open_npu() as npu:
        assert npu.info.runlists and "emulator" in npu.info.runlists_reason


def test_failed_run_in_a_chain_is_blamed_not_the_new_runs_before_it(rng, monkeypatch):
    """Run 2 of a chain of 4 fails: runs 0 and 1 stay NEW (XRT never marks them), so the
    failed run is the one in ERROR; the device then recreates its context and serves."""
    from npu_pipeline.device.queue import CommandQueue

    monkeypatch.setattr(CommandQueue, "chain_length", lambda self, block: 4)
    with open_npu(faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=2)]) as npu:
        m, k, n = BLOCK
        slot = npu.allocate_slot({"a": 4 * m * k, "b": 4 * k * n, "c": 4 * m * n * 4})
        sub, _ = gemm_start(npu, slot, rng, n_runs=4, batch=7, request=3)
        assert len(sub.running) == 1  # one chain
        with pytest.raises(DeviceError, match="run 2 of batch 7") as info:
            npu.wait(sub)
        assert (info.value.run, info.value.state) == (2, "ERT_CMD_STATE_ERROR")
        sub, pairs = gemm_start(npu, slot, rng, n_runs=4)
        npu.wait(sub)
        assert_slot_exact(slot, pairs)
        assert npu._queue.recoveries == 1


def test_runs_behind_a_failure_are_not_blamed_and_the_context_is_recreated(rng):
    """Four batches in flight, the second fails: the two behind it met a context out of
    step (run=None, 'not the batch's own fault'); run again, all are exact."""
    options = {"timing": lambda contract, block: 0.05}  # all four start before one ends
    with open_npu(**options, faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=1)]) as npu:
        slots = [npu.allocate_slot(BLOCK) for _ in range(4)]
        started = [gemm_start(npu, slot, rng, batch=i) for i, slot in enumerate(slots)]
        npu.wait(started[0][0])
        assert_slot_exact(slots[0], started[0][1])
        errors = []
        for sub, _ in started[1:]:
            with pytest.raises(DeviceError) as info:
                npu.wait(sub)
            errors.append(info.value)
        assert (errors[0].batch, errors[0].run, errors[0].state) == (1, 0, "ERT_CMD_STATE_ERROR")
        for error in errors[1:]:
            assert error.run is None and "not the batch's own fault" in str(error)
        for slot, (_, pairs) in zip(slots[1:], started[1:], strict=True):
            npu.wait(npu.start(slot, BLOCK))  # the same operands, once more
            assert_slot_exact(slot, pairs)
        assert npu._queue.recoveries == 1


def test_a_reset_command_left_new_does_not_stay_in_flight(rng):
    """An older driver's reset leaves the hung command NEW and XRT's wait throws: the
    batch fails with a DeviceError saying so, its place in flight and its slot are
    given back, and the device recreates its context and serves exactly."""
    options = {"watchdog_s": 0.1, "reset_leaves_new": True}
    with open_npu(**options, faults=[xrt.Fault(xrt.FaultKind.HANG, run_index=0)]) as npu:
        slot = npu.allocate_slot(BLOCK)
        sub, _ = gemm_start(npu, slot, rng, batch=0, request=5)
        with pytest.raises(DeviceError, match="unexpected command state") as info:
            npu.wait(sub)
        assert (info.value.run, info.value.request) == (0, 5)
        assert npu._queue.in_flight == [] and not npu._queue.active
        sub, pairs = gemm_start(npu, slot, rng)
        npu.wait(sub)
        assert_slot_exact(slot, pairs)


def pipeline_leaks_checked(pipe) -> None:
    assert pipe.slots_in_use == 0 and pipe.active_requests == 0


def small_requests(rng, count=9):
    return [(random_int8(rng, (40, 30)), random_int8(rng, (30, 20))) for _ in range(count)]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["ERROR", "HANG"])
async def test_pipeline_fails_the_request_of_the_failed_chain_run_only(rng, kind, monkeypatch):
    """Small requests share a submission run as one chain; its run 1 fails. Run 0 stays
    NEW, yet the request of run 1 fails, and every other request is run again (on a
    recreated context) and is exact."""
    import npu_pipeline as npp
    from npu_pipeline.device.queue import CommandQueue

    monkeypatch.setattr(CommandQueue, "chain_length", lambda self, block: 24)
    inputs = small_requests(rng)
    options = {"faults": [xrt.Fault(xrt.FaultKind[kind], run_index=1)], "watchdog_s": 0.2}
    async with npp.open_pipeline(
        device="emulator", host_path=False, device_options=options
    ) as pipe:
        outcomes = await concurrent_requests(pipe, inputs)
        pipeline_leaks_checked(pipe)
        again = await pipe.matmul(*inputs[0])
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, npp.DeviceError)]
    assert len(failed) == 1
    error = outcomes[failed[0]]
    assert (
        error.run == 1
        and error.state == f"ERT_CMD_STATE_{'ERROR' if kind == 'ERROR' else 'TIMEOUT'}"
    )
    for index, (a, b) in enumerate(inputs):
        if index not in failed:
            np.testing.assert_array_equal(outcomes[index], a.astype(np.int64) @ b.astype(np.int64))
    a, b = inputs[0]
    np.testing.assert_array_equal(again, a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.anyio
async def test_pipeline_goes_on_after_a_reset_command_left_new(rng):
    """reset_leaves_new: the hung request fails with a clear DeviceError; the others and
    the next requests are exact, and no slot stays held."""
    import npu_pipeline as npp

    inputs = small_requests(rng, count=4)
    options = {
        "faults": [xrt.Fault(xrt.FaultKind.HANG, run_index=0)],
        "watchdog_s": 0.1,
        "reset_leaves_new": True,
    }
    async with npp.open_pipeline(
        device="emulator", host_path=False, device_options=options
    ) as pipe:
        outcomes = await concurrent_requests(pipe, inputs)
        pipeline_leaks_checked(pipe)
        later = [await pipe.matmul(a, b) for a, b in inputs]
    failed = [o for o in outcomes if isinstance(o, npp.DeviceError)]
    assert len(failed) == 1 and "unexpected command state" in str(failed[0])
    for outcome, (a, b) in zip(outcomes, inputs, strict=True):
        if outcome is not failed[0]:
            np.testing.assert_array_equal(outcome, a.astype(np.int64) @ b.astype(np.int64))
    for c, (a, b) in zip(later, inputs, strict=True):
        np.testing.assert_array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
