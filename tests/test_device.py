"""NpuDevice: backend choice, slots, batches of runs, failures, and cleanup."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import threading
import time

import numpy as np
import pytest
from conftest import exact, random_int8

from npu_pipeline import emulator, reference
from npu_pipeline.contract import load_contract
from npu_pipeline.device import NpuDevice
from npu_pipeline.device import queue as device_queue
from npu_pipeline.device.queue import CommandQueue
from npu_pipeline.device.slots import SlotBuffers
from npu_pipeline.emulator import Fault, FaultKind
from npu_pipeline.errors import BufferHazardError, ContractError, DeviceError, ShapeError

GEMM = load_contract("gemm_i8_i32")
TILE16 = load_contract("tile16_legacy")
BLOCK = (256, 64, 256)  # the smallest legal gemm_i8_i32 block on npu1


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no device thread and no BO behind, whatever happened."""
    yield
    gc.collect()
    assert emulator.live_device_threads() == 0
    assert emulator.live_bos() == 0


@dataclasses.dataclass(frozen=True)
class Profile:
    """The part of a DeviceProfile that NpuDevice and the emulator use."""

    generation: str = "npu1"
    runs_in_flight: int = 4
    watchdog_s: float = 2.0
    seconds: float = 0.0

    def run_seconds(self, contract, block):
        return self.seconds


def pack_gemm(slot, a, b):
    slot.view("a", np.int8)[: a.size] = a.ravel()
    slot.view("b", np.int8)[: b.size] = b.ravel()


def result(slot, m, n):
    return slot.view("c")[: m * n].reshape(m, n)


def gemm_batch(npu, slot, rng, block=BLOCK, **ids):
    """Pack random operands into ``slot``, start and wait; return the expected product."""
    m, k, n = block
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    pack_gemm(slot, a, b)
    npu.wait(npu.start(slot, block, **ids))
    return exact(a, b)


def pack_tiles(slot, a, b):
    pairs = slot.view("in", np.int8).reshape(-1, 512)[: len(a)]
    pairs[:, :256] = a.reshape(len(a), 256)
    pairs[:, 256:] = b.reshape(len(b), 256)


def count_syncs(monkeypatch):
    """Count every bo.sync of the emulator as (direction, bytes)."""
    calls = []
    original = emulator.bo.sync

    def sync(self, direction, size=None, offset=0):
        calls.append((int(direction), self.size() if size is None else size))
        original(self, direction, size, offset)

    monkeypatch.setattr(emulator.bo, "sync", sync)
    return calls


# -- opening ----------------------------------------------------------------------


def test_auto_without_pyxrt_uses_the_emulator_and_says_why():
    with NpuDevice.open(GEMM) as npu:
        info = npu.info
    assert (info.backend, info.generation, info.kernel) == ("emulator", "npu1", "gemm_i8_i32")
    assert info.name == "NPU Phoenix" and info.default_profile == "cpu"
    assert (info.runs_in_flight, info.watchdog_s, info.timing) == (4, 2.0, "cpu")
    assert "pyxrt is not importable" in info.reason


def test_xrt_without_pyxrt_explains_how_to_install_it():
    with pytest.raises(DeviceError, match=r"setup\.sh") as error:
        NpuDevice.open(GEMM, device="xrt")
    assert "not on PyPI" in str(error.value)


def test_bad_options_are_refused():
    with pytest.raises(DeviceError, match="one of"):
        NpuDevice.open(GEMM, device="gpu")
    with pytest.raises(DeviceError, match="timed=True without a profile"):
        NpuDevice.open(GEMM, device="emulator", timed=True)


def test_profile_sets_generation_limits_and_modelled_timing(rng):
    profile = Profile(generation="npu2", runs_in_flight=2, watchdog_s=1.5, seconds=0.05)
    with NpuDevice.open(GEMM, device="emulator", profile=profile, timed=True) as npu:
        assert (npu.info.generation, npu.info.name) == ("npu2", "NPU Strix")
        assert (npu.info.runs_in_flight, npu.info.watchdog_s) == (2, 1.5)
        assert npu.info.timing == "modelled"
        block = (256, 64, 512)  # npu2's block grid
        slot = npu.allocate_slot(block)
        began = time.perf_counter()
        expected = gemm_batch(npu, slot, rng, block)
        assert time.perf_counter() - began >= 0.05
        np.testing.assert_array_equal(result(slot, 256, 512), expected)


def test_real_xrt_path_reads_the_kernel_build_folder(tmp_path, rng):
    """device='xrt' on a pyxrt-compatible module: xclbin and insts.bin come from the build."""
    shutil.copy(GEMM.source, tmp_path / "kernel.json")
    contract = load_contract(tmp_path / "kernel.json")
    # The default layout: build/<generation>/ beside kernel.json, with the
    # known-answer block's instructions.
    emulator.write_build(contract, tmp_path / "build" / "npu1", "npu1", [BLOCK, (256, 64, 256)])
    with NpuDevice.open(contract, device="xrt", xrt_module=emulator) as npu:
        assert npu.info.backend == "xrt" and npu.info.timing == "hardware"
        assert not npu.info.runlists and "single runs" in npu.info.runlists_reason
        slot = npu.allocate_slot(BLOCK)
        expected = gemm_batch(npu, slot, rng)
        np.testing.assert_array_equal(result(slot, 256, 256), expected)
        with pytest.raises(ContractError, match=r"insts_512x64x256\.bin does not exist"):
            npu.start(npu.allocate_slot((512, 64, 256)), (512, 64, 256))


# -- batches ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["row_major", "tile_major"])
def test_gemm_batches_are_exact(rng, layout):
    contract = dataclasses.replace(GEMM, layout=layout)
    r, s, t = contract.target("npu1").micro_tile

    def tiled(x, tr, tc):
        rows, cols = x.shape
        return x.reshape(rows // tr, tr, cols // tc, tc).transpose(0, 2, 1, 3).ravel()

    with NpuDevice.open(contract, device="emulator") as npu:
        slot = npu.allocate_slot((256, 1088, 256))
        for block in [(256, 1088, 256), (256, 64, 256)]:
            m, k, n = block
            a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
            if layout == "tile_major":
                pack_gemm(slot, tiled(a, r, s), tiled(b, s, t))
            else:
                pack_gemm(slot, a, b)
            done = npu.wait(npu.start(slot, block, batch=3, request=9))
            assert (done.batch, done.request, done.cancelled) == (3, 9, False)
            expected = exact(a, b)
            if layout == "tile_major":
                expected = tiled(expected, r, t).reshape(m, n)
            np.testing.assert_array_equal(result(slot, m, n), expected)


def test_tile16_batch_one_sync_in_four_in_flight_one_sync_out(rng, monkeypatch):
    """The legacy contract through the same layer: many tile pairs in one large BO."""
    pairs = 40
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    with NpuDevice.open(
        TILE16, device="emulator", profile=Profile(seconds=1e-3), timed=True
    ) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        pack_tiles(slot, a, b)
        syncs = count_syncs(monkeypatch)
        sub = npu.start(slot, (16, 16, 16), n_runs=pairs)
        assert len(sub.running) == 4  # the driver's limit, never a blocking fifth start
        npu.wait(sub)
        # Read while the device is open: closing it frees the BOs the view shows.
        out = slot.view("out").reshape(pairs, 16, 16).copy()
    # in, out: the instructions of (16, 16, 16) were loaded by the known-answer run at open.
    assert sorted(syncs) == [(0, 512 * pairs), (1, 256 * pairs)]
    for i in range(pairs):
        np.testing.assert_array_equal(out[i], reference.tile16_kernel(a[i], b[i]))


def test_gemm_syncs_only_the_used_bytes(rng, monkeypatch):
    with NpuDevice.open(GEMM, device="emulator") as npu:
        slot = npu.allocate_slot((512, 128, 512))
        syncs = count_syncs(monkeypatch)
        expected = gemm_batch(npu, slot, rng, (256, 64, 256))
        np.testing.assert_array_equal(result(slot, 256, 256), expected)
    # The instructions of (256, 64, 256) were loaded by the known-answer run at open.
    assert sorted(syncs) == [(0, 256 * 64), (0, 64 * 256), (1, 256 * 256 * 4)]


def test_threads_share_one_device(rng):
    """Several worker threads, each with its own slot, start and wait concurrently."""
    errors = []

    def worker(npu, seed):
        local = np.random.default_rng(seed)
        slot = npu.allocate_slot(BLOCK)
        try:
            for batch in range(8):
                expected = gemm_batch(npu, slot, local, batch=batch, request=seed)
                np.testing.assert_array_equal(result(slot, 256, 256), expected)
        except Exception as error:  # reported below
            errors.append(error)
        finally:
            npu.free_slot(slot)

    with NpuDevice.open(GEMM, device="emulator", profile=Profile(seconds=2e-3), timed=True) as npu:
        threads = [threading.Thread(target=worker, args=(npu, seed)) for seed in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not errors


def test_slot_too_small_or_illegal_block_is_refused():
    with NpuDevice.open(GEMM, device="emulator") as npu:
        slot = npu.allocate_slot(BLOCK)
        with pytest.raises(ShapeError, match="need"):
            npu.start(slot, (512, 64, 256))
        with pytest.raises(ContractError, match="illegal"):
            npu.start(slot, (128, 64, 256))


# -- runlist chains ---------------------------------------------------------------


@pytest.fixture
def long_chains(monkeypatch):
    """Any measured pace allows the longest chain (24 runs), so tests do not depend
    on how fast this machine computes a tile pair."""
    monkeypatch.setattr(device_queue, "CHAIN_BUDGET_S", 1e9)


def tile_batch(npu, slot, rng, pairs, **ids):
    """Pack random tile pairs into ``slot``, start them; return (submission, a, b)."""
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    pack_tiles(slot, a, b)
    return npu.start(slot, (16, 16, 16), n_runs=pairs, **ids), a, b


def check_tiles(slot, a, b):
    out = slot.view("out").reshape(-1, 16, 16)
    for i in range(len(a)):
        np.testing.assert_array_equal(out[i], reference.tile16_kernel(a[i], b[i]))


def test_tile_batches_are_chained_once_their_pace_is_measured(rng, monkeypatch, long_chains):
    """First batch of a shape: one run per command. Later: runlists of up to 24 runs,
    each one command in flight, still one sync in and one sync out per batch."""
    pairs = 40
    with NpuDevice.open(TILE16, device="emulator") as npu:
        assert npu.info.runlists
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        sub, a, b = tile_batch(npu, slot, rng, pairs)
        assert sub.chain == 1 and len(sub.running) == 4
        npu.wait(sub)
        check_tiles(slot, a, b)
        syncs = count_syncs(monkeypatch)
        for _ in range(2):  # the second time re-executes the same runlists
            sub, a, b = tile_batch(npu, slot, rng, pairs)
            assert sub.chain == 24 and len(sub.running) == 2  # runs 0-23 and 24-39
            assert sub.next_run == pairs
            npu.wait(sub)
            check_tiles(slot, a, b)
    assert sorted(syncs) == [(0, 512 * pairs)] * 2 + [(1, 256 * pairs)] * 2


def test_runlists_can_be_turned_off(rng, long_chains):
    """runlists=False keeps one command per run: the window every XRT version supports."""
    pairs = 12
    with NpuDevice.open(TILE16, device="emulator", runlists=False) as npu:
        assert not npu.info.runlists
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        for _ in range(2):
            sub, a, b = tile_batch(npu, slot, rng, pairs)
            assert sub.chain == 1 and len(sub.running) == 4
            npu.wait(sub)
            check_tiles(slot, a, b)


def test_chains_respect_the_in_flight_limit(rng, monkeypatch):
    """Chains of two runs and a limit of two commands: two chains, four runs, in flight."""
    monkeypatch.setattr(CommandQueue, "chain_length", lambda self, block: 2)
    pairs = 16
    with NpuDevice.open(TILE16, device="emulator", profile=Profile(runs_in_flight=2)) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        sub, a, b = tile_batch(npu, slot, rng, pairs)
        assert (len(sub.running), sub.next_run) == (2, 4)
        npu.wait(sub)
        check_tiles(slot, a, b)


def test_chains_are_waited_for_untimed_and_blame_the_marked_run(rng, monkeypatch, long_chains):
    """pyxrt cannot call runlist.wait(timeout) (a std::chrono argument, no caster): chains
    are waited for untimed, once each is the oldest command in flight. A failed chain
    leaves the runs before the failed one NEW: the run XRT marked is the one named."""
    calls = []
    untimed = emulator.runlist.wait

    def wait(self, *args, **kwargs):
        calls.append((args, kwargs))
        return untimed(self, *args, **kwargs)

    monkeypatch.setattr(emulator.runlist, "wait", wait)
    pairs = 30
    fault = Fault(FaultKind.ERROR, run_index=2 * pairs + 27)  # run 27 of the third batch
    with NpuDevice.open(TILE16, device="emulator", faults=[fault]) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        for _ in range(2):
            sub, a, b = tile_batch(npu, slot, rng, pairs)
            npu.wait(sub)
            check_tiles(slot, a, b)
        with pytest.raises(DeviceError, match="run 27 of batch 2") as info:
            npu.wait(tile_batch(npu, slot, rng, pairs, batch=2)[0])
        assert (info.value.run, info.value.state) == (27, "ERT_CMD_STATE_ERROR")
    assert calls and all(call == ((), {}) for call in calls)


def test_failed_run_inside_a_chain_is_named(rng, long_chains):
    """A run failing inside a chain: DeviceError naming it; the device keeps serving."""
    pairs = 12
    fault = Fault(FaultKind.ERROR, run_index=pairs + 5)  # run 5 of the second batch
    with NpuDevice.open(TILE16, device="emulator", faults=[fault]) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        npu.wait(tile_batch(npu, slot, rng, pairs)[0])
        sub = tile_batch(npu, slot, rng, pairs, batch=1, request=3)[0]
        assert sub.chain > 1
        with pytest.raises(DeviceError, match="run 5 of batch 1") as info:
            npu.wait(sub)
        assert (info.value.state, info.value.request) == ("ERT_CMD_STATE_ERROR", 3)
        assert not sub.running
        sub, a, b = tile_batch(npu, slot, rng, pairs)  # the slot and the device serve on
        npu.wait(sub)
        check_tiles(slot, a, b)


def test_part_of_a_slot_runs_again_from_first_run(rng, long_chains):
    """A failed run is named by its index in the slot (DeviceError.run); the runs that
    lost their output with it run again alone, from ``first_run``, and are exact."""
    pairs = 12
    with NpuDevice.open(
        TILE16, device="emulator", faults=[Fault(FaultKind.ERROR, run_index=5)]
    ) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        sub, a, b = tile_batch(npu, slot, rng, pairs, batch=4)
        with pytest.raises(DeviceError) as info:
            npu.wait(sub)
        assert info.value.run == 5
        slot.view("out")[:] = 0
        npu.wait(npu.start(slot, (16, 16, 16), n_runs=5))
        npu.wait(npu.start(slot, (16, 16, 16), n_runs=pairs - 6, first_run=6))
        out = slot.view("out").reshape(pairs, 16, 16)
        for run in (*range(5), *range(6, pairs)):
            np.testing.assert_array_equal(out[run], reference.tile16_kernel(a[run], b[run]))
        assert not out[5].any()  # run 5 was not run again: its output was never synced
        with pytest.raises(ShapeError, match=r"runs 10\.\.12"):
            npu.start(slot, (16, 16, 16), n_runs=3, first_run=10)


def test_packing_into_a_chained_batch_in_flight_is_caught(rng, long_chains):
    """A write into the last run's input while its chain runs: that run ends in ERROR
    and wait raises the hazard; the slot is usable again afterwards."""
    pairs = 8
    profile = Profile(seconds=0.01)
    with NpuDevice.open(TILE16, device="emulator", profile=profile, timed=True) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        npu.wait(tile_batch(npu, slot, rng, pairs)[0])
        sub = tile_batch(npu, slot, rng, pairs)[0]
        assert len(sub.running) == 1  # one chain of all eight runs
        slot.view("in", np.int8)[512 * (pairs - 1)] += 1
        with pytest.raises(BufferHazardError, match=r"map\(\) view"):
            npu.wait(sub)
        sub, a, b = tile_batch(npu, slot, rng, pairs)
        npu.wait(sub)
        check_tiles(slot, a, b)


def test_runs_left_over_start_in_batch_order_whoever_waits(rng, monkeypatch):
    """Batch A takes every place in flight; B and C are started while the limit is
    full, so none of their runs start. Waiting for C alone (as a caller waiting
    for another batch, or none, would) must start B's runs before C's, as places
    free, and see every chain end, although only a poll tells."""
    monkeypatch.setattr(CommandQueue, "chain_length", lambda self, block: 2)
    pairs = 8
    with NpuDevice.open(TILE16, device="emulator") as npu:
        slots = [npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs}) for _ in range(3)]
        sub_a, a_a, b_a = tile_batch(npu, slots[0], rng, pairs)
        sub_b, a_b, b_b = tile_batch(npu, slots[1], rng, pairs)
        sub_c, a_c, b_c = tile_batch(npu, slots[2], rng, pairs)
        assert [len(s.running) for s in (sub_a, sub_b, sub_c)] == [4, 0, 0]
        npu.wait(sub_c, timeout_s=10)
        assert sub_b.next_run == sub_b.end_run  # every run of B started before C's last
        npu.wait(sub_a, timeout_s=10)
        npu.wait(sub_b, timeout_s=10)
        for slot, a, b in zip(slots, (a_a, a_b, a_c), (b_a, b_b, b_c), strict=True):
            check_tiles(slot, a, b)


def test_error_starting_another_batchs_runs_goes_to_that_batchs_wait(rng, monkeypatch):
    """Waiting for A starts B's left-over runs; when that start fails, A's wait is
    not the one to raise: B's wait raises it, naming B, and the device serves on."""
    monkeypatch.setattr(CommandQueue, "chain_length", lambda self, block: 2)
    pairs = 8
    with NpuDevice.open(TILE16, device="emulator") as npu:
        slots = [npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs}) for _ in range(2)]
        sub_a, a_a, b_a = tile_batch(npu, slots[0], rng, pairs, batch=0, request=1)
        sub_b, _, _ = tile_batch(npu, slots[1], rng, pairs, batch=3, request=2)
        assert (len(sub_a.running), len(sub_b.running)) == (4, 0)
        chain = SlotBuffers.chain

        def refuse_b(self, sub, first, count):
            if sub is sub_b:
                raise RuntimeError("command submission refused")
            return chain(self, sub, first, count)

        monkeypatch.setattr(SlotBuffers, "chain", refuse_b)
        npu.wait(sub_a, timeout_s=10)
        check_tiles(slots[0], a_a, b_a)
        with pytest.raises(DeviceError, match="command submission refused") as info:
            npu.wait(sub_b, timeout_s=10)
        assert (info.value.batch, info.value.request) == (3, 2)
        sub, a, b = tile_batch(npu, slots[1], rng, pairs)
        npu.wait(sub, timeout_s=10)
        check_tiles(slots[1], a, b)


def test_chain_of_a_timed_out_wait_frees_its_slot_when_it_ends(rng, long_chains):
    """After wait(timeout_s) gave up, nobody waits for the chain; starting its slot
    again waits for it (untimed, as pyxrt's runlist.wait allows: at most one chain,
    CHAIN_BUDGET_S of device time unless chains are forced long as here), then the
    slot is free. The timeout is looked at between polls: 0 s gives up at once."""
    pairs = 8
    profile = Profile(seconds=0.03)
    with NpuDevice.open(TILE16, device="emulator", profile=profile, timed=True) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        npu.wait(tile_batch(npu, slot, rng, pairs)[0])
        began = time.perf_counter()
        sub, a, b = tile_batch(npu, slot, rng, pairs, batch=2)
        with pytest.raises(DeviceError, match="did not complete within"):
            npu.wait(sub, timeout_s=0.0)
        sub = npu.start(slot, (16, 16, 16), n_runs=pairs)  # the same tiles once more
        assert time.perf_counter() - began >= pairs * 0.03  # the orphan chain ended first
        npu.wait(sub)
        check_tiles(slot, a, b)


def test_should_stop_waits_for_the_chains_in_flight(rng, long_chains):
    pairs = 40
    profile = Profile(seconds=0.002)
    with NpuDevice.open(TILE16, device="emulator", profile=profile, timed=True) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        npu.wait(tile_batch(npu, slot, rng, pairs)[0])
        sub = tile_batch(npu, slot, rng, pairs)[0]
        done = npu.wait(sub, should_stop=lambda: True)
        assert done.cancelled and not sub.running
        sub, a, b = tile_batch(npu, slot, rng, pairs)
        assert not npu.wait(sub).cancelled
        check_tiles(slot, a, b)


# -- failures ---------------------------------------------------------------------


def test_run_error_names_state_batch_and_request_and_device_keeps_serving(rng):
    with NpuDevice.open(
        GEMM, device="emulator", faults=[Fault(FaultKind.ERROR, run_index=1)]
    ) as npu:
        slot = npu.allocate_slot(BLOCK)
        gemm_batch(npu, slot, rng, batch=0, request=5)
        with pytest.raises(DeviceError, match="ended in ERT_CMD_STATE_ERROR") as info:
            gemm_batch(npu, slot, rng, batch=1, request=5)
        assert (info.value.state, info.value.batch, info.value.request) == (
            "ERT_CMD_STATE_ERROR",
            1,
            5,
        )
        expected = gemm_batch(npu, slot, rng, batch=2, request=6)
        np.testing.assert_array_equal(result(slot, 256, 256), expected)


def test_failed_tile_run_stops_the_batch_after_its_runs_in_flight(rng):
    pairs = 12
    with NpuDevice.open(
        TILE16, device="emulator", faults=[Fault(FaultKind.ERROR, run_index=2)]
    ) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        pack_tiles(slot, random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16)))
        sub = npu.start(slot, (16, 16, 16), n_runs=pairs, batch=7)
        with pytest.raises(DeviceError, match="run 2 of batch 7"):
            npu.wait(sub)
        assert sub.next_run < pairs and not sub.running
        npu.wait(npu.start(slot, (16, 16, 16), n_runs=pairs))  # the slot is free again


def test_hang_is_reported_as_watchdog_timeout(rng):
    with NpuDevice.open(
        GEMM, device="emulator", watchdog_s=0.1, faults=[Fault(FaultKind.HANG, run_index=0)]
    ) as npu:
        assert npu.info.watchdog_s == 0.1
        slot = npu.allocate_slot(BLOCK)
        with pytest.raises(DeviceError) as info:
            gemm_batch(npu, slot, rng, batch=0)
        assert info.value.state == "ERT_CMD_STATE_TIMEOUT"


def test_lost_device_fails_requests_and_closes_cleanly(rng):
    npu = NpuDevice.open(GEMM, device="emulator", faults=[Fault(FaultKind.DEVICE_LOST, 0)])
    slot = npu.allocate_slot(BLOCK)
    with pytest.raises(DeviceError, match="ERT_CMD_STATE_ABORT"):
        gemm_batch(npu, slot, rng, batch=0, request=1)
    with pytest.raises(DeviceError, match="No such device") as info:
        gemm_batch(npu, slot, rng, batch=1, request=2)
    assert (info.value.batch, info.value.request) == (1, 2)
    npu.close()
    npu.close()  # idempotent


def test_host_timeout_keeps_the_slot_busy_until_the_run_ends(rng):
    with NpuDevice.open(GEMM, device="emulator", profile=Profile(seconds=0.5), timed=True) as npu:
        slot = npu.allocate_slot(BLOCK)
        sub = npu.start(slot, BLOCK, batch=4)
        with pytest.raises(DeviceError, match="did not complete within") as info:
            npu.wait(sub, timeout_s=0.02)
        assert info.value.state == "ERT_CMD_STATE_NEW" and info.value.batch == 4
        with pytest.raises(BufferHazardError, match="still in flight"):
            npu.start(slot, BLOCK)
        time.sleep(0.6)
        gemm_batch(npu, slot, rng)


def test_packing_into_a_slot_in_flight_is_caught(rng):
    """The seed's pipelined executor bug: writing a buffer a run is using."""
    with NpuDevice.open(GEMM, device="emulator", profile=Profile(seconds=0.1), timed=True) as npu:
        slot = npu.allocate_slot(BLOCK)
        sub = npu.start(slot, BLOCK)
        slot.view("a", np.int8)[0] += 1
        with pytest.raises(BufferHazardError, match=r"map\(\) view"):
            npu.wait(sub)
        gemm_batch(npu, slot, rng)  # and the slot is usable again


def test_should_stop_cancels_remaining_runs(rng):
    pairs = 20
    with NpuDevice.open(
        TILE16, device="emulator", profile=Profile(seconds=0.01), timed=True
    ) as npu:
        slot = npu.allocate_slot({"in": 512 * pairs, "out": 256 * pairs})
        sub = npu.start(slot, (16, 16, 16), n_runs=pairs)
        done = npu.wait(sub, should_stop=lambda: True)
        assert done.cancelled and sub.next_run == 4 and not sub.running
        a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
        pack_tiles(slot, a, b)
        assert not npu.wait(npu.start(slot, (16, 16, 16), n_runs=pairs)).cancelled
        out = slot.view("out").reshape(pairs, 16, 16)
        np.testing.assert_array_equal(out[-1], reference.tile16_kernel(a[-1], b[-1]))


def test_close_with_runs_in_flight_releases_everything(rng):
    npu = NpuDevice.open(GEMM, device="emulator", profile=Profile(seconds=0.05), timed=True)
    slots = [npu.allocate_slot(BLOCK) for _ in range(3)]
    for slot in slots:
        npu.start(slot, BLOCK)
    npu.close()
    with pytest.raises(DeviceError, match="closed"):
        npu.allocate_slot(BLOCK)


def test_an_emulator_bug_is_a_lost_device_not_a_hang(monkeypatch, caplog):
    """If computing a run raises, its waiters get an error at once (the device is lost)."""
    from npu_pipeline.emulator import _queue

    def broken(*args, **kwargs):
        raise RuntimeError("simulated emulator bug")

    block = (256, 64, 256)
    with NpuDevice.open(load_contract("gemm_i8_i32"), device="emulator") as device:
        monkeypatch.setattr(_queue, "execute", broken)  # after the known-answer run
        slot = device.allocate_slot(block)
        submission = device.start(slot, block, batch=7, request=3)
        with pytest.raises(DeviceError) as info:
            device.wait(submission, timeout_s=5)
        assert info.value.state == "ERT_CMD_STATE_ABORT"
        assert info.value.batch == 7
        with pytest.raises(DeviceError):
            device.start(slot, block)
    assert "simulated emulator bug" in caplog.text
    # The captured record's traceback holds the device thread's frames (and BOs).
    caplog.clear()
