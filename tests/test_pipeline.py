"""The pipeline end to end on the emulated NPU: exact values, on asyncio and trio."""

import threading

import anyio
import numpy as np
import pytest
from conftest import exact, random_int8
from hypothesis import given
from hypothesis import strategies as st

import npu_pipeline as npp
from npu_pipeline.reference import Rounding, Saturation, seed_wrapper_matmul, srs

pytestmark = pytest.mark.anyio

# Every granularity in play: micro-tiles 4 and 8, the 16 of tile16, the 64 of a core tile.
AWKWARD = st.sampled_from([1, 2, 3, 5, 7, 13, 17, 31, 63, 65, 127, 129, 257])


def small_budget_pipeline(**kwargs):
    """A pipeline whose memory budget forces many batches even for small shapes."""
    # The smallest gemm_i8_i32 slot on npu1 is 256x64 + 64x256 int8 + 256x256 int32.
    return npp.open_pipeline(
        device="emulator", host_path=False, memory_budget=3 * 294_912, **kwargs
    )


async def test_exact_int32_many_batches(rng):
    a = random_int8(rng, (300, 1100))
    b = random_int8(rng, (1100, 200))
    async with small_budget_pipeline() as pipe:
        plan = pipe.plan(300, 1100, 200)
        assert len(plan.batches) > 4, "the budget should force several batches"
        c = await pipe.matmul(a, b)
    assert c.dtype == np.int32
    assert np.array_equal(c, exact(a, b))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(m=AWKWARD, k=AWKWARD, n=AWKWARD, seed=st.integers(0, 2**32 - 1))
def test_exact_for_awkward_shapes(backend, m, k, n, seed):
    rng = np.random.default_rng(seed)
    a = random_int8(rng, (m, k))
    b = random_int8(rng, (k, n))

    async def main():
        async with small_budget_pipeline() as pipe:
            return await pipe.matmul(a, b)

    assert np.array_equal(anyio.run(main, backend=backend), exact(a, b))


async def test_large_k_beyond_float32_exactness(rng):
    """K = 5000: sums reach past 2**24, where float32 arithmetic stops being exact."""
    a = np.full((3, 5000), -128, dtype=np.int8)
    b = np.full((5000, 2), -128, dtype=np.int8)
    a[1] = random_int8(rng, 5000)
    async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
        c = await pipe.matmul(a, b)
    assert c[0, 0] == 5000 * 128 * 128 > 2**24
    assert np.array_equal(c, exact(a, b))


@pytest.mark.parametrize(
    ("shift", "rounding", "saturation"),
    [
        (7, Rounding.FLOOR, Saturation.SATURATE),
        (9, Rounding.HALF_EVEN, Saturation.SYMMETRIC),
        (8, Rounding.HALF_AWAY, Saturation.NONE),
        (0, Rounding.TRUNC, Saturation.SATURATE),
    ],
)
async def test_requantised_int8_applies_srs_once(rng, shift, rounding, saturation):
    a = random_int8(rng, (70, 600))
    b = random_int8(rng, (600, 90))
    async with small_budget_pipeline() as pipe:
        assert any(not batch.final for batch in pipe.plan(70, 600, 90, np.int8).batches)
        c8 = await pipe.matmul(
            a, b, out_dtype=np.int8, shift=shift, rounding=rounding, saturation=saturation
        )
    assert c8.dtype == np.int8
    assert np.array_equal(c8, srs(exact(a, b), shift, rounding, saturation))


async def test_out_is_honoured_including_views(rng):
    a = random_int8(rng, (40, 50))
    b = random_int8(rng, (50, 30))
    backing = np.full((60, 80), 7, dtype=np.int32)
    out = backing[5:45, 10:70:2]  # a strided view
    async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
        result = await pipe.matmul(a, b, out=out)
    assert result is out
    assert np.array_equal(out, exact(a, b))
    untouched = backing.copy()
    untouched[5:45, 10:70:2] = 7
    assert np.all(untouched == 7), "nothing outside the view was written"


async def test_views_as_inputs(rng):
    big = random_int8(rng, (90, 120))
    a = big[::2, 1::3]  # strided rows and columns
    b = np.asfortranarray(big[:40, :33])[::-1]  # Fortran order, negative stride
    async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
        c = await pipe.matmul(a, b)
    assert np.array_equal(c, exact(a, b))


async def test_legacy_contract_reproduces_the_seed_semantic(rng):
    a = random_int8(rng, (40, 70))
    b = random_int8(rng, (70, 24))
    async with npp.open_pipeline(
        device="emulator", host_path=False, kernel="tile16_legacy"
    ) as pipe:
        c = await pipe.matmul(a, b, out_dtype=np.int8)
        with pytest.raises(npp.DTypeError, match="int8"):
            await pipe.matmul(a, b, out_dtype=np.int32)
    assert np.array_equal(c, seed_wrapper_matmul(a, b))


async def concurrent_requests(pipe, inputs):
    """Run the (a, b) pairs concurrently; each result, or the DeviceError it raised."""
    outcomes = [None] * len(inputs)

    async def one(index, a, b):
        try:
            outcomes[index] = await pipe.matmul(a, b)
        except npp.DeviceError as error:
            outcomes[index] = error

    async with anyio.create_task_group() as group:
        for index, (a, b) in enumerate(inputs):
            # Started without yielding: all are queued before the feed picks one.
            group.start_soon(one, index, a, b)
    return outcomes


async def test_concurrent_mixed_requests_all_exact(rng):
    shapes = [(int(m), int(k), int(n)) for m, k, n in rng.integers(1, 200, size=(36, 3))]
    shapes[0] = (600, 700, 500)  # one large request among them
    inputs = [(random_int8(rng, (m, k)), random_int8(rng, (k, n))) for m, k, n in shapes]

    async with small_budget_pipeline() as pipe:
        results = await concurrent_requests(pipe, inputs)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
    for (a, b), c in zip(inputs, results, strict=True):
        assert np.array_equal(c, exact(a, b))


def shared_submissions(spans):
    """Execute intervals that more than one batch ran in (one submission of a shared slot)."""
    batches_per_interval = {}
    for span in spans:
        if span.stage == "execute":
            key = (span.start, span.end)
            batches_per_interval[key] = batches_per_interval.get(key, 0) + 1
    return [count for count in batches_per_interval.values() if count > 1]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(
    shapes=st.lists(st.tuples(AWKWARD, AWKWARD, AWKWARD), min_size=2, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_small_requests_share_slots_and_stay_exact(backend, shapes, seed):
    """Concurrent small requests are run several to a slot; each result is still exact."""
    rng = np.random.default_rng(seed)
    inputs = [(random_int8(rng, (m, k)), random_int8(rng, (k, n))) for m, k, n in shapes]

    async def main():
        async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
            results = await concurrent_requests(pipe, inputs)
            assert pipe.slots_in_use == 0 and pipe.active_requests == 0
            return results, pipe.timeline.spans

    results, spans = anyio.run(main, backend=backend)
    for (a, b), c in zip(inputs, results, strict=True):
        assert np.array_equal(c, exact(a, b))
    if len(inputs) > 3 and all(m <= 256 and k <= 64 and n <= 256 for m, k, n in shapes):
        # More requests than slots, all queued at once, all of the smallest block.
        assert shared_submissions(spans)


@pytest.mark.parametrize("kind", ["ERROR", "HANG"])
async def test_fault_in_a_shared_submission_fails_only_its_request(rng, kind):
    """Run 1 of the first submission fails: the request of that run fails, naming its
    batch; the submission's other batches (and the runs aborted behind a hang) are
    run again, and their requests are exact."""
    from npu_pipeline.emulator import Fault, FaultKind

    inputs = [(random_int8(rng, (40, 30)), random_int8(rng, (30, 20))) for _ in range(9)]
    options = {"faults": [Fault(FaultKind[kind], run_index=1)], "watchdog_s": 0.2}
    async with npp.open_pipeline(
        device="emulator", host_path=False, device_options=options
    ) as pipe:
        outcomes = await concurrent_requests(pipe, inputs)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
        spans = pipe.timeline.spans
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, npp.DeviceError)]
    assert len(failed) == 1  # run 1 held the only batch of one request
    error = outcomes[failed[0]]
    assert error.batch == 0 and error.run == 1
    assert error.state == ("ERT_CMD_STATE_ERROR" if kind == "ERROR" else "ERT_CMD_STATE_TIMEOUT")
    assert f"batch 0 of request {error.request}" in str(error) and "submission of" in str(error)
    for index, (a, b) in enumerate(inputs):
        if index not in failed:
            assert np.array_equal(outcomes[index], exact(a, b))
    assert shared_submissions(spans)
    assert_no_leaks()


async def test_lost_device_fails_every_request_of_a_shared_submission(rng):
    from npu_pipeline.emulator import Fault, FaultKind

    inputs = [(random_int8(rng, (40, 30)), random_int8(rng, (30, 20))) for _ in range(9)]
    options = {"faults": [Fault(FaultKind.DEVICE_LOST, run_index=1)]}
    async with npp.open_pipeline(
        device="emulator", host_path=False, device_options=options
    ) as pipe:
        outcomes = await concurrent_requests(pipe, inputs)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
    assert all(isinstance(outcome, npp.DeviceError) for outcome in outcomes[1:])
    assert_no_leaks()


async def test_cancelling_a_request_of_a_shared_submission_leaves_the_others_exact(rng):
    """The cancelled request's run ends with its submission, and nothing is written
    into its array; the other batches of the submission are exact."""
    inputs = [(random_int8(rng, (40, 30)), random_int8(rng, (30, 20))) for _ in range(9)]
    victim_out = np.full((40, 20), 7, dtype=np.int32)
    # Timed: each run lasts the cpu model's time, long enough to cancel in.
    async with npp.open_pipeline(
        device="emulator", host_path=False, profile="cpu", timed=True
    ) as pipe:
        victim_scope = anyio.CancelScope()

        async def victim():
            with victim_scope:
                await pipe.matmul(*inputs[0], out=victim_out)

        async with anyio.create_task_group() as group:
            group.start_soon(victim)
            results = {}

            async def other(index, a, b):
                results[index] = await pipe.matmul(a, b)

            for index, (a, b) in enumerate(inputs[1:], start=1):
                group.start_soon(other, index, a, b)
            while pipe.slots_in_use == 0:
                await anyio.sleep(0)
            victim_scope.cancel()
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
        spans = pipe.timeline.spans
    assert victim_scope.cancelled_caught
    assert (victim_out == 7).all()
    for index in range(1, len(inputs)):
        assert np.array_equal(results[index], exact(*inputs[index]))
    assert shared_submissions(spans)
    assert_no_leaks()


async def test_small_request_is_not_stuck_behind_a_large_one(rng):
    big_a, big_b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    small_a, small_b = random_int8(rng, (8, 8)), random_int8(rng, (8, 8))
    order = []
    async with small_budget_pipeline() as pipe:
        assert len(pipe.plan(1024, 1024, 1024).batches) > 20

        async def big():
            await pipe.matmul(big_a, big_b)
            order.append("big")

        async def small():
            await anyio.sleep(0.01)
            assert np.array_equal(await pipe.matmul(small_a, small_b), exact(small_a, small_b))
            order.append("small")

        async with anyio.create_task_group() as group:
            group.start_soon(big)
            group.start_soon(small)
    assert order == ["small", "big"]


async def test_cancel_mid_request_releases_everything(rng):
    a, b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    async with small_budget_pipeline() as pipe:
        threads_before = threading.active_count()
        with anyio.move_on_after(0.05) as scope:
            await pipe.matmul(a, b)
        assert scope.cancelled_caught
        assert pipe.slots_in_use == 0
        assert pipe.active_requests == 0
        small_a, small_b = random_int8(rng, (33, 65)), random_int8(rng, (65, 17))
        assert np.array_equal(await pipe.matmul(small_a, small_b), exact(small_a, small_b))
        for _ in range(10):
            with anyio.move_on_after(0.01):
                await pipe.matmul(a, b)
        assert pipe.slots_in_use == 0
        assert threading.active_count() <= threads_before + 2


async def test_cancelling_one_request_leaves_others_exact(rng):
    a, b = random_int8(rng, (512, 1024)), random_int8(rng, (1024, 512))
    other_a, other_b = random_int8(rng, (300, 400)), random_int8(rng, (400, 200))
    async with small_budget_pipeline() as pipe:
        results = {}

        async def victim():
            with anyio.move_on_after(0.05):
                await pipe.matmul(a, b)
                results["victim"] = "finished?"

        async def survivor():
            results["survivor"] = await pipe.matmul(other_a, other_b)

        async with anyio.create_task_group() as group:
            group.start_soon(victim)
            group.start_soon(survivor)
    assert np.array_equal(results["survivor"], exact(other_a, other_b))


async def test_closing_with_requests_in_flight_fails_them_cleanly(rng):
    a, b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    errors = []
    async with small_budget_pipeline() as pipe:

        async def request():
            try:
                await pipe.matmul(a, b)
            except npp.PipelineClosedError as error:
                errors.append(error)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(request)
            await anyio.sleep(0.05)
            await pipe.aclose()
        with pytest.raises(npp.PipelineClosedError, match="closed pipeline"):
            await pipe.matmul(a, b)
    assert len(errors) == 3


async def test_bad_input_is_refused_before_work(rng):
    a = random_int8(rng, (4, 5))
    async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
        with pytest.raises(npp.DTypeError, match="float32"):
            await pipe.matmul(a.astype(np.float32), a.T.copy())
        with pytest.raises(npp.ShapeError, match="inner dimensions"):
            await pipe.matmul(a, a)
        with pytest.raises(npp.ShapeError, match="shift"):
            await pipe.matmul(a, a.T.copy(), shift=3)
        with pytest.raises(npp.ShapeError, match="shift"):
            await pipe.matmul(a, a.T.copy(), out_dtype=np.int8, shift=40)
        with pytest.raises(npp.DTypeError, match="rounding"):
            await pipe.matmul(a, a.T.copy(), out_dtype=np.int8, rounding="nearest")
        with pytest.raises(npp.DTypeError, match="out_dtype"):
            await pipe.matmul(a, a.T.copy(), out_dtype=np.float32)
        assert pipe.active_requests == 0


async def test_an_error_in_the_block_leaves_it_as_itself(rng):
    """Not wrapped in an ExceptionGroup: ``except ShapeError`` around the block works."""
    with pytest.raises(npp.ShapeError):
        async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
            await pipe.matmul(random_int8(rng, (3, 4)), random_int8(rng, (5, 6)))
    assert_no_leaks()


async def test_no_numba_or_device_call_on_the_event_loop(rng, monkeypatch):
    """Every packing kernel and device call runs in a worker thread, never the loop's."""
    from npu_pipeline import device, packing

    loop_thread = threading.get_ident()
    calls = []

    def watch(owner, name):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append((name, threading.get_ident()))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("pack_block", "accumulate_block", "requantize"):
        watch(packing, name)
    for name in ("start", "wait", "allocate_slot", "free_slot", "close"):
        watch(device.NpuDevice, name)
    a, b = random_int8(rng, (200, 300)), random_int8(rng, (300, 100))
    async with small_budget_pipeline() as pipe:
        assert np.array_equal(
            await pipe.matmul(a, b, out_dtype=np.int8, shift=8),
            srs(exact(a, b), 8, "floor", "saturate"),
        )
    names = {name for name, _ in calls}
    assert {"pack_block", "accumulate_block", "requantize", "start", "wait", "close"} <= names
    assert all(thread != loop_thread for _, thread in calls)


async def test_timeline_records_every_stage_of_every_batch(rng):
    a, b = random_int8(rng, (256, 512)), random_int8(rng, (512, 256))
    async with small_budget_pipeline() as pipe:
        await pipe.matmul(a, b)
        plan = pipe.plan(256, 512, 256)
        spans = pipe.timeline.spans
    stages = {(s.batch, s.stage) for s in spans}
    expected = {
        (batch.index, stage)
        for batch in plan.batches
        for stage in ("pack", "execute", "accumulate")
    }
    assert stages == expected
    assert all(s.end >= s.start for s in spans)
    assert len(plan.batches) > 1  # so eta is defined
    assert 0.0 <= pipe.timeline.overlap_efficiency() <= 1.0


def faulty_pipeline(*faults, **options):
    from npu_pipeline import emulator

    return npp.open_pipeline(
        device="emulator",
        host_path=False,
        memory_budget=3 * 294_912,
        device_options={
            "faults": [emulator.Fault(kind, run_index=i) for kind, i in faults],
            **options,
        },
    )


def assert_no_leaks():
    import gc

    from npu_pipeline import emulator

    gc.collect()
    assert emulator.live_device_threads() == 0
    assert emulator.live_bos() == 0


async def test_run_error_fails_only_its_request(rng):
    from npu_pipeline.emulator import FaultKind

    victim_a, victim_b = random_int8(rng, (300, 500)), random_int8(rng, (500, 300))
    other_a, other_b = random_int8(rng, (200, 300)), random_int8(rng, (300, 100))
    outcome = {}
    async with faulty_pipeline((FaultKind.ERROR, 0)) as pipe:

        async def victim():
            with pytest.raises(npp.DeviceError) as info:
                await pipe.matmul(victim_a, victim_b)
            outcome["error"] = info.value

        async def other():
            outcome["other"] = await pipe.matmul(other_a, other_b)

        async with anyio.create_task_group() as group:
            group.start_soon(victim)
            # trio starts tasks in random order: queue the victim first, so that
            # the first run on the device (run 0, the faulty one) is its batch 0.
            while pipe.active_requests == 0:
                await anyio.sleep(0)
            group.start_soon(other)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
        again = await pipe.matmul(victim_a, victim_b)
    error = outcome["error"]
    assert error.state == "ERT_CMD_STATE_ERROR"
    assert error.batch == 0
    assert error.request == 1
    assert "batch 0" in str(error)
    assert np.array_equal(outcome["other"], exact(other_a, other_b))
    assert np.array_equal(again, exact(victim_a, victim_b))
    assert_no_leaks()


async def test_hang_hits_the_watchdog_and_the_pipeline_keeps_serving(rng):
    from npu_pipeline.emulator import FaultKind

    a, b = random_int8(rng, (256, 256)), random_int8(rng, (256, 300))
    async with faulty_pipeline((FaultKind.HANG, 1), watchdog_s=0.2) as pipe:
        with pytest.raises(npp.DeviceError) as info:
            await pipe.matmul(a, b)
        assert info.value.state in ("ERT_CMD_STATE_TIMEOUT", "ERT_CMD_STATE_ABORT")
        assert pipe.slots_in_use == 0
        assert np.array_equal(await pipe.matmul(a, b), exact(a, b))
    assert_no_leaks()


async def test_lost_device_fails_requests_and_closes_cleanly(rng):
    from npu_pipeline.emulator import FaultKind

    a, b = random_int8(rng, (256, 256)), random_int8(rng, (256, 300))
    async with faulty_pipeline((FaultKind.DEVICE_LOST, 2)) as pipe:
        with pytest.raises(npp.DeviceError):
            await pipe.matmul(a, b)
        with pytest.raises(npp.DeviceError):
            await pipe.matmul(a, b)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
    assert_no_leaks()


async def test_no_leaks_after_cancellation_and_close(rng):
    a, b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    async with small_budget_pipeline() as pipe:
        with anyio.move_on_after(0.02):
            await pipe.matmul(a, b)
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(lambda: pipe.matmul(a, b))
            await anyio.sleep(0.02)
            group.cancel_scope.cancel()
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
    assert_no_leaks()


def test_a_detached_error_keeps_no_traceback_on_either_link():
    """An error raised from one exception while handling another: both lose their
    tracebacks (they pin worker frames, and with them slots and BOs)."""
    from npu_pipeline.errors import detached

    def raise_both():
        try:
            raise ValueError("cause")
        except ValueError as error:
            cause = error
        try:
            raise KeyError("handled")
        except KeyError:
            raise npp.DeviceError("failed") from cause

    with pytest.raises(npp.DeviceError) as info:
        raise_both()
    error = detached(info.value)
    assert error is info.value
    assert isinstance(error.__cause__, ValueError) and isinstance(error.__context__, KeyError)
    links = [error, error.__cause__, error.__context__]
    assert [link.__traceback__ for link in links] == [None, None, None]
