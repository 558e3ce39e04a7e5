"""The latency budget and the host path: fair plans, tiny requests off the device, exact."""

import math
import threading

import anyio
import numpy as np
import pytest
from conftest import exact, random_int8
from hypothesis import given
from hypothesis import strategies as st

import npu_pipeline as npp
from npu_pipeline import pipeline as pipeline_module
from npu_pipeline.contract import load_contract
from npu_pipeline.planner import (
    BATCHES_PER_BUDGET,
    DEFAULT_LATENCY_BUDGET_S,
    HOST_PATH_MAX_S,
    LATENCY_COST_TOLERANCE,
)
from npu_pipeline.reference import Rounding, Saturation, srs

GEMM = load_contract("gemm_i8_i32")


def batch_device_seconds(plan, profile):
    """Modelled device seconds of every batch of ``plan``."""
    return [b.n_runs * profile.run_seconds(GEMM, b.block, queued=True) for b in plan.batches]


# -- the planner ------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["npu1", "npu2", "cpu"])
def test_a_large_product_is_cut_to_fit_the_budget_where_that_is_cheap(profile):
    prof = npp.get_profile(profile)
    fastest = npp.plan_batches(3000, 2048, 2048, profile=prof, latency_budget_s=math.inf)
    plan = npp.plan_batches(3000, 2048, 2048, profile=prof)
    assert plan.latency_budget_s == DEFAULT_LATENCY_BUDGET_S
    limit = DEFAULT_LATENCY_BUDGET_S / BATCHES_PER_BUDGET
    longest = max(batch_device_seconds(plan, prof))
    assert plan.batch_device_s == pytest.approx(longest)
    if plan.fits_latency_budget:
        assert longest <= limit
        assert plan.estimate.wall_s <= fastest.estimate.wall_s * (1 + LATENCY_COST_TOLERANCE)
        assert plan.latency_cost == pytest.approx(
            plan.estimate.wall_s / fastest.estimate.wall_s - 1, abs=1e-9
        )
    else:  # fitting would have cost more than the tolerance: throughput won, and it says so
        assert plan.latency_cost > LATENCY_COST_TOLERANCE
        assert plan.estimate.wall_s == pytest.approx(fastest.estimate.wall_s)
        assert "does NOT fit" in plan.explain()


def test_the_real_npus_fit_the_budget_for_whisper_shapes():
    for profile in ("npu1", "npu2"):
        for shape in ((1500, 512, 1536), (1500, 512, 2048), (1500, 2048, 512)):
            plan = npp.plan_batches(*shape, profile=profile)
            assert plan.fits_latency_budget, (profile, shape, plan.explain())
            assert "fits <=" in plan.explain()


def test_a_larger_budget_gives_fewer_batches():
    memory = {"profile": "npu1", "memory_budget": 64 * 2**20}
    tight = npp.plan_batches(3000, 2048, 2048, **memory)
    loose = npp.plan_batches(3000, 2048, 2048, latency_budget_s=math.inf, **memory)
    assert tight.fits_latency_budget
    assert len(tight.batches) > len(loose.batches)
    assert tight.batch_device_s <= DEFAULT_LATENCY_BUDGET_S / 2 < loose.batch_device_s


def test_a_budget_no_block_can_fit_is_reported_not_refused():
    plan = npp.plan_batches(2048, 2048, 2048, profile="npu1", latency_budget_s=1e-5)
    assert not plan.fits_latency_budget and math.isinf(plan.latency_cost)
    assert "no legal block is that short" in plan.explain()


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "4ms", True])
def test_a_bad_latency_budget_is_refused(bad):
    with pytest.raises(npp.PlanError, match="latency_budget_s"):
        npp.plan_batches(64, 64, 64, latency_budget_s=bad)


def test_tiny_products_go_to_the_host_and_the_plan_says_why():
    plan = npp.plan_batches(64, 64, 64, profile="npu1")
    assert plan.path == "host"
    assert plan.host_s < plan.estimate.wall_s
    assert plan.predicted_s == plan.host_s
    assert "beats the device path" in plan.path_reason
    assert "path      host" in plan.explain()
    device = npp.plan_batches(64, 64, 64, profile="npu1", host_path=False)
    assert device.path == "device" and "turned off" in device.path_reason
    assert device.predicted_s == device.estimate.wall_s


def test_large_products_stay_on_the_device_even_where_the_host_is_faster():
    # On the emulator the device is this CPU, so the host is always a little faster;
    # past HOST_PATH_MAX_S the product would hold a host core in one piece.
    plan = npp.plan_batches(1500, 512, 2048, profile="cpu")
    assert plan.host_s > HOST_PATH_MAX_S
    assert plan.path == "device" and "in one piece" in plan.path_reason


def test_the_clipped_tile_kernel_has_no_host_path():
    plan = npp.plan_batches(64, 64, 64, kernel="tile16_legacy", profile="npu1")
    assert plan.path == "device" and plan.host_s is None
    assert "clipped" in plan.path_reason


# -- the pipeline -------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(
    m=st.integers(1, 160),
    k=st.integers(1, 1500),
    n=st.integers(1, 160),
    int8=st.booleans(),
    shift=st.integers(0, 20),
    rounding=st.sampled_from(list(Rounding)),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_host_path_is_exact(backend, m, k, n, int8, shift, rounding, seed):
    rng = np.random.default_rng(seed)
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    options = {"out_dtype": np.int8, "shift": shift, "rounding": rounding} if int8 else {}

    async def main():
        async with npp.open_pipeline(device="emulator") as pipe:
            return pipe.plan(m, k, n, options.get("out_dtype")), await pipe.matmul(a, b, **options)

    plan, c = anyio.run(main, backend=backend)
    expected = srs(exact(a, b), shift, rounding, Saturation.SATURATE) if int8 else exact(a, b)
    assert c.dtype == (np.int8 if int8 else np.int32)
    assert np.array_equal(c, expected), plan.path


@pytest.mark.anyio
@pytest.mark.parametrize("inline_s", [0.0, math.inf])
async def test_host_path_inline_or_in_its_thread_records_a_host_span(rng, monkeypatch, inline_s):
    monkeypatch.setattr(pipeline_module, "INLINE_HOST_S", inline_s)
    a, b = random_int8(rng, (70, 90)), random_int8(rng, (90, 50))
    threads_before = threading.active_count()
    async with npp.open_pipeline(device="emulator") as pipe:
        assert pipe.plan(70, 90, 50).path == "host"
        with pipe.timeline.window() as window:
            c = await pipe.matmul(a, b)
        assert np.array_equal(c, exact(a, b))
        assert [s.stage for s in window.spans] == ["host"]
        summary = window.summary()
        assert summary.host_requests == 1 and summary.batches == 0
        assert "computed exactly on the host" in window.report()
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
    assert threading.active_count() <= threads_before + 1  # anyio keeps an idle worker


@pytest.mark.anyio
async def test_a_small_request_issued_during_a_large_one_finishes_first(rng):
    """The latency budget on the device path: the small one is not stuck behind the large.

    Planned for npu1 (whose plans fit the budget), run untimed on the emulator.
    """
    a, b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    sa, sb = random_int8(rng, (256, 256)), random_int8(rng, (256, 256))
    done = []
    async with npp.open_pipeline(device="emulator", profile="npu1", host_path=False) as pipe:
        plan = pipe.plan(1024, 1024, 1024)
        assert plan.fits_latency_budget and len(plan.batches) >= 8

        async def large():
            done.append(("large", await pipe.matmul(a, b)))

        async with anyio.create_task_group() as group:
            group.start_soon(large)
            while not pipe.timeline.spans:  # the large request is running
                await anyio.sleep(0.001)
            done.append(("small", await pipe.matmul(sa, sb)))
    assert [name for name, _ in done] == ["small", "large"]
    assert np.array_equal(done[0][1], exact(sa, sb))
    assert np.array_equal(done[1][1], exact(a, b))


@pytest.mark.anyio
async def test_cancelling_a_large_request_leaves_the_others_exact_and_nothing_held(rng):
    a, b = random_int8(rng, (1024, 1024)), random_int8(rng, (1024, 1024))
    sa, sb = random_int8(rng, (200, 300)), random_int8(rng, (300, 100))
    async with npp.open_pipeline(device="emulator", host_path=False) as pipe:
        out = np.zeros((1024, 1024), dtype=np.int32)
        with anyio.move_on_after(0.02):
            await pipe.matmul(a, b, out=out)
        assert pipe.slots_in_use == 0 and pipe.active_requests == 0
        assert np.array_equal(await pipe.matmul(sa, sb), exact(sa, sb))
        assert np.array_equal(await pipe.matmul(a, b), exact(a, b))
