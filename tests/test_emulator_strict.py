"""The emulator is at least as strict as real pyxrt and the amdxdna driver.

Each test here failed on the lenient emulator: device names the driver
really reports, the GIL held where pyxrt holds it, pinned memory counted
against RLIMIT_MEMLOCK, and the calls pyxrt's binding has no overload for.
"""

from __future__ import annotations

import gc
import resource
import threading
import time

import anyio
import numpy as np
import pytest
from conftest import exact, random_int8
from test_emulator import (
    BLOCK,
    FROM,
    GEMM,
    TILE16,
    TO,
    gemm_run,
    no_leaks,  # noqa: F401  (an autouse fixture: imported, it runs here too)
    operands,
    read_c,
    rig,
    slow,
)

from npu_pipeline import emulator as xrt
from npu_pipeline import open_pipeline
from npu_pipeline.device import NpuDevice
from npu_pipeline.device.discovery import generation_of
from npu_pipeline.errors import BufferHazardError, DeviceError, DriverRuleError
from npu_pipeline.profile_lookup import get_profile

KIB = 1024
MIB = 1024 * KIB
HOST_ONLY = xrt.bo.host_only


@pytest.fixture(autouse=True)
def no_locked_pages():
    """Besides no thread and no BO left (``no_leaks``, autouse here too): no page locked."""
    yield
    gc.collect()
    assert xrt.locked_bytes() == 0


# -- 1. device names -------------------------------------------------------------

ALL_NAMES = [(name, gen) for gen, names in xrt.VBNV_NAMES.items() for name in names]


@pytest.mark.parametrize(("name", "generation"), ALL_NAMES)
def test_every_driver_name_opens_as_its_generation(name, generation):
    """Every vbnv string the driver reports is a known generation: no profile needed."""
    assert generation_of(name, None) == generation
    with NpuDevice.open(GEMM, device="emulator", name=name) as npu:
        assert (npu.info.name, npu.info.generation) == (name, generation)


def test_the_emulator_reports_real_names_by_default():
    for generation, names in xrt.VBNV_NAMES.items():
        with rig(generation=generation) as r:
            assert r.dev.get_info(xrt.xrt_info_device.name) == names[0]


def test_an_unknown_name_says_how_to_pass_a_profile():
    with pytest.raises(DeviceError, match=r"profile='npu2'.*--profile"):
        NpuDevice.open(GEMM, device="emulator", name="NPU Medusa")
    # "npu10" is not "npu1": names match whole words.
    with pytest.raises(DeviceError, match="cannot tell"):
        generation_of("RyzenAI-npu10", None)
    npu2 = get_profile("npu2")
    with NpuDevice.open(GEMM, device="emulator", name="NPU Medusa", profile=npu2) as npu:
        assert npu.info.generation == "npu2"


# -- 3. the GIL ------------------------------------------------------------------


class Counter:
    """A Python thread counting as fast as the GIL lets it (a packer, say)."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.count += 1

    def __enter__(self) -> Counter:
        self._thread.start()
        time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, call) -> tuple[int, float]:
        """Counts and seconds that passed while ``call()`` ran."""
        before, started = self.count, time.perf_counter()
        call()
        return self.count - before, time.perf_counter() - started


def counts_per_second_while_waiting(hold_gil: bool, wait) -> tuple[float, float]:
    """(counts per second of another thread during ``wait(run)``, and when idle)."""
    rng = np.random.default_rng(1)
    with rig(timing=slow(0.25), hold_gil=hold_gil) as r, Counter() as counter:
        idle, idle_s = counter.during(lambda: time.sleep(0.1))
        a, b = operands(rng)
        run, bo_c = gemm_run(r, a, b)
        counted, waited = counter.during(lambda: wait(run))
        assert waited > 0.15
        assert np.array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))
    return counted / waited, idle / idle_s


def test_wait_holds_the_gil_through_the_modelled_run():
    """pyxrt's run.wait() keeps the GIL: a thread that needs it stops for the run."""
    held, idle = counts_per_second_while_waiting(True, lambda run: run.wait())
    free, _ = counts_per_second_while_waiting(False, lambda run: run.wait())
    assert held < 0.1 * idle
    assert free > 0.3 * idle


def test_sliced_waits_let_other_threads_run():
    """Waiting in 2 ms slices, with the GIL let go between them, keeps other threads going."""

    def sliced(run):
        while run.wait(2) == xrt.ert_cmd_state.ERT_CMD_STATE_TIMEOUT:
            time.sleep(0.002)

    sliced_rate, idle = counts_per_second_while_waiting(True, sliced)
    assert sliced_rate > 0.25 * idle


def test_a_start_beyond_the_limit_blocks_with_the_gil_held():
    rng = np.random.default_rng(2)
    with rig(timing=slow(0.4), runs_in_flight=1) as r, Counter() as counter:
        idle, idle_s = counter.during(lambda: time.sleep(0.1))
        a, b = operands(rng)
        first, _ = gemm_run(r, a, b)
        bo_a, bo_b = r.data(3, a.nbytes, a), r.data(4, b.nbytes, b)
        bo_c = r.data(5, BLOCK[0] * BLOCK[2] * 4)
        instr, n = r.instr(BLOCK)
        second = xrt.run(r.kernel)
        for index, value in enumerate((3, instr, n, bo_a, bo_b, bo_c)):
            second.set_arg(index, value)
        counted, blocked = counter.during(second.start)  # waits for `first` to end
        # The GIL goes for a few switch intervals (5 ms) while the device thread
        # computes and ends the run; through the modelled time it is held.
        assert blocked > 0.3 and counted / blocked < 0.15 * idle / idle_s
        assert first.wait() == second.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
        assert np.array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


@pytest.mark.anyio
async def test_the_pipeline_keeps_host_stages_running_during_a_long_run():
    """With the GIL held as on hardware, a batch whose run takes 0.3 s (modelled) still
    leaves the event loop ticking: the device layer waits in 2 ms slices."""
    rng = np.random.default_rng(3)
    a, b = random_int8(rng, (256, 64)), random_int8(rng, (64, 256))
    profile = get_profile("npu1")
    slowed = profile.slowed(0.3 / profile.run_seconds(GEMM, (256, 64, 256), queued=False))
    ticks = 0

    async def heartbeat():
        nonlocal ticks
        while True:
            await anyio.sleep(0.001)
            ticks += 1

    async with (
        open_pipeline(profile=slowed, timed=True, device="emulator", host_path=False) as pipe,
        anyio.create_task_group() as group,
    ):
        group.start_soon(heartbeat)
        await anyio.sleep(0.1)
        idle, started = ticks, time.perf_counter()
        await anyio.sleep(0.1)
        idle_rate = (ticks - idle) / (time.perf_counter() - started)
        before, started = ticks, time.perf_counter()
        c = await pipe.matmul(a, b)
        elapsed = time.perf_counter() - started
        busy_rate = (ticks - before) / elapsed
        group.cancel_scope.cancel()
    assert np.array_equal(c, exact(a, b))
    assert elapsed > 0.25
    # A worker blocked in an untimed wait() would hold the GIL for the whole run: ~0.
    assert busy_rate > 0.25 * idle_rate


# -- 5. pinned memory --------------------------------------------------------------


def test_allocations_past_the_memlock_limit_fail_like_xrt():
    with rig(memlock_bytes=64 * KIB) as r:
        base = xrt.locked_bytes()
        first = xrt.bo(r.dev, 40 * KIB, HOST_ONLY, r.kernel.group_id(3))
        assert xrt.locked_bytes() == base + 40 * KIB
        with pytest.raises(RuntimeError, match="Resource temporarily unavailable") as refused:
            xrt.bo(r.dev, 30 * KIB, HOST_ONLY, r.kernel.group_id(4))
        assert type(refused.value) is RuntimeError  # plain, as XRT's
        xrt.bo(r.dev, 4096, HOST_ONLY, r.kernel.group_id(4))  # whole pages: 1 more fits
        del first
        gc.collect()
        xrt.bo(r.dev, 50 * KIB, HOST_ONLY, r.kernel.group_id(4))  # freed pages count no more


def test_the_default_limit_is_the_processs_rlimit():
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    with rig() as r:
        assert r.dev.memlock_limit() == (None if soft == resource.RLIM_INFINITY else soft)
    with xrt.emulated_host(memlock_bytes=MIB), rig() as r:
        assert r.dev.memlock_limit() == MIB


def test_allocate_slot_checks_the_limit_first_and_says_how_to_raise_it():
    with NpuDevice.open(GEMM, device="emulator", memlock_bytes=256 * KIB) as npu:
        bos = xrt.live_bos()
        with pytest.raises(DeviceError) as refused:
            npu.allocate_slot(BLOCK)  # 16 + 16 + 256 KiB
        for fix in ("/etc/security/limits.conf", "LimitMEMLOCK", "ulimit -l"):
            assert fix in str(refused.value)
        assert xrt.live_bos() == bos  # nothing allocated, nothing leaked
        slot = npu.allocate_slot((256, 64, 64))  # 16 + 4 + 64 KiB fits
        npu.free_slot(slot)


def test_a_raw_refusal_from_xrt_becomes_a_device_error(monkeypatch):
    """A refusal the pre-check could not foresee (the limit was misread) still
    comes back as a DeviceError naming the limit, and leaks nothing."""
    with NpuDevice.open(GEMM, device="emulator", memlock_bytes=128 * KIB) as npu:
        monkeypatch.setattr(npu._session, "memlock", lambda: (None, 0))
        bos = xrt.live_bos()
        with pytest.raises(DeviceError, match="XRT said: bo allocation failed") as refused:
            npu.allocate_slot(BLOCK)
        assert "ulimit -l unlimited" in str(refused.value)
        gc.collect()
        assert xrt.live_bos() == bos


@pytest.mark.anyio
async def test_the_pipeline_checks_its_budget_against_the_limit_up_front():
    options = {"memlock_bytes": 2 * MIB}
    with pytest.raises(DeviceError, match="memory_budget=8388608"):
        async with open_pipeline(device="emulator", memory_budget=8 * MIB, device_options=options):
            pass
    rng = np.random.default_rng(4)
    a, b = random_int8(rng, (600, 300)), random_int8(rng, (300, 500))
    async with open_pipeline(device="emulator", device_options=options) as pipe:
        assert pipe.memory_budget <= 2 * MIB  # the profile's 64 MiB, capped
        assert np.array_equal(await pipe.matmul(a, b), exact(a, b))


# -- 6. calls real pyxrt refuses ------------------------------------------------------


def test_calls_without_a_pyxrt_overload_raise_type_error():
    with rig() as r:
        bo = r.data(3, 4096)
        for call in (
            lambda: bo.sync(TO, 4096),  # size without offset
            lambda: bo.sync(0),  # an int direction
            lambda: bo.sync(0, 4096, 0),
            lambda: bo.write(np.zeros(16, np.int8)),  # no seek
            lambda: bo.read(16),  # no skip
            lambda: xrt.bo(r.dev, 4096, r.kernel.group_id(3)),  # device without flags
            lambda: xrt.bo(r.dev, 4096, int(HOST_ONLY), r.kernel.group_id(3)),  # int flags
            lambda: xrt.bo(r.dev, 4096.0, HOST_ONLY, r.kernel.group_id(3)),
        ):
            with pytest.raises(TypeError, match="incompatible function arguments"):
                call()
        # What the binding has: sync(dir), sync(dir, size, offset), bo(hw_context, size, group)
        # (whose default flags the NPU driver refuses).
        bo.sync(TO)
        bo.sync(FROM, 16, 0)
        with pytest.raises(DriverRuleError, match="normal"):
            xrt.bo(r.ctx, 4096, r.kernel.group_id(3))


def test_a_context_on_an_unregistered_xclbin_is_refused():
    """XRT refuses a context for a UUID the device never registered (pinned here:
    the emulator already refused it)."""
    with rig() as r, rig() as other:
        with pytest.raises(DriverRuleError, match="not registered"):
            xrt.hw_context(r.dev, xrt.xclbin(TILE16).get_uuid())
        uuid = other.dev.register_xclbin(xrt.xclbin(TILE16))
        with pytest.raises(DriverRuleError, match="not registered"):
            xrt.hw_context(r.dev, uuid)  # registered on another device only


def test_freeing_a_bo_while_a_map_view_lives_is_detected():
    with rig() as r:
        bo = r.data(3, 4096)
        view = np.frombuffer(bo.map(), dtype=np.uint8)
        view[:] = 7
        del bo
        gc.collect()
        assert (view == xrt.POISON).all()  # freed memory, not the 7s
        with pytest.raises(BufferHazardError, match="freed while a map"):
            r.data(4, 4096)
        del view
        r.data(4, 4096)  # reported once


def test_dropping_a_bo_and_its_views_together_is_fine():
    with rig() as r:
        held = {"bo": r.data(3, 4096)}
        held["view"] = np.frombuffer(held["bo"].map(), dtype=np.uint8)
        del held
        gc.collect()
        r.data(4, 4096)


def test_reading_an_output_in_flight_is_flagged():
    rng = np.random.default_rng(5)
    with rig(timing=slow(0.2)) as r:
        a, b = operands(rng)
        bo_c = r.data(5, BLOCK[0] * BLOCK[2] * 4)
        view = np.frombuffer(bo_c.map(), dtype=np.uint8)
        run, _ = gemm_run(r, a, b, c_bo=bo_c)
        with pytest.raises(BufferHazardError, match="read of bytes"):
            bo_c.read(16, 0)
        assert (view == xrt.POISON).all()  # what a read through the view would see
        assert run.wait() == xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED
        assert np.array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))
        del view


def test_free_slot_drops_the_slots_views_before_its_bos():
    rng = np.random.default_rng(6)
    with NpuDevice.open(GEMM, device="emulator") as npu:
        slot = npu.allocate_slot(BLOCK)
        a, _ = operands(rng)
        slot.view("a", np.int8)[: a.size] = a.ravel()
        npu.free_slot(slot)
        assert not slot.views
        npu.free_slot(npu.allocate_slot(BLOCK))  # nothing dangling to report
        kept = npu.allocate_slot(BLOCK)
        packer = kept.view("a", np.int8)  # a packer keeps an array past free_slot: a bug
        npu.free_slot(kept)
        with pytest.raises(BufferHazardError, match="freed while a map"):
            npu.allocate_slot(BLOCK)
        del packer


# -- doctor's failure modes ---------------------------------------------------------


def test_the_emulated_host_plays_no_device():
    with xrt.emulated_host(devices=0):
        assert xrt.enumerate_devices() == 0
        with pytest.raises(DeviceError, match="0 found"):
            xrt.device(0)
        with pytest.raises(DeviceError, match="found no NPU"):
            NpuDevice.open(GEMM, device="xrt", xrt_module=xrt)
    assert xrt.enumerate_devices() == 1
