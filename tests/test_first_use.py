"""The library's side of what a new user ran into (issue 11): each a typed
error that names the problem, or a default that follows the kernel."""

import numpy as np
import pytest
from conftest import exact, random_int8

import npu_pipeline as npp
from npu_pipeline.contract import load_contract
from npu_pipeline.device import NpuDevice
from npu_pipeline.reference import seed_wrapper_matmul


def message(raises) -> str:
    return str(raises.value)


# ---------------------------------------------------------------------------
# slots: one check, one error, in the planner and the pipeline


@pytest.mark.anyio
@pytest.mark.parametrize("slots", [0, 5, -1])
async def test_open_pipeline_and_the_planner_refuse_bad_slots_alike(slots):
    with pytest.raises(npp.PlanError) as planned:
        npp.plan_batches(64, 64, 64, profile="npu1", slots=slots)
    with pytest.raises(npp.PlanError) as opened:
        async with npp.open_pipeline(device="emulator", profile="npu1", slots=slots):
            pass
    text = message(planned)
    assert message(opened) == text and f"slots={slots}" in text
    assert "an integer 1..4" in text and "Pass slots between 1 and 4" in text


# ---------------------------------------------------------------------------
# device_options: names checked before the device opens


async def refused_options(device: str, options: dict) -> str:
    """The OptionError message ``open_pipeline`` gives for these ``device_options``."""
    with pytest.raises(npp.OptionError) as raised:
        async with npp.open_pipeline(device=device, device_options=options):
            pass
    assert isinstance(raised.value, TypeError)
    return message(raised)


@pytest.mark.anyio
async def test_an_unknown_device_option_is_named_with_the_accepted_ones():
    text = await refused_options("emulator", {"fualts": []})
    assert "['fualts']" in text
    for accepted in ("faults", "watchdog_s", "runs_in_flight", "runlists", "index"):
        assert f"'{accepted}'" in text


@pytest.mark.anyio
async def test_open_pipelines_own_arguments_are_not_device_options():
    assert "['timed']" in await refused_options("emulator", {"timed": True})


@pytest.mark.anyio
async def test_emulator_options_are_refused_for_real_xrt_before_it_is_looked_for():
    text = await refused_options("xrt", {"faults": []})
    assert "['faults']" in text and "device='xrt'" in text
    assert "'runlists'" in text and "'watchdog_s'" not in text


def test_npu_device_open_refuses_an_unknown_option_by_name():
    with pytest.raises(npp.OptionError, match=r"\['bogus'\]"):
        NpuDevice.open(load_contract("gemm_i8_i32"), device="emulator", bogus=1)


# ---------------------------------------------------------------------------
# out_dtype follows the contract; int32 is refused where the kernel cannot give it


def test_the_plans_output_dtype_is_the_contracts():
    legacy = npp.plan_batches(64, 64, 64, kernel="tile16_legacy")
    assert legacy.out_dtype == "int8" and "-> int8" in legacy.explain()
    gemm = npp.plan_batches(64, 64, 64)
    assert gemm.out_dtype == "int32" and "-> int32" in gemm.explain()
    assert npp.plan_batches(64, 64, 64, out_dtype=np.int32) == gemm


@pytest.mark.anyio
async def test_int32_from_the_tile_pair_kernel_is_one_error_in_plan_and_matmul(rng):
    a, b = random_int8(rng, (32, 48)), random_int8(rng, (48, 16))
    with pytest.raises(npp.DTypeError) as planned:
        npp.plan_batches(32, 48, 16, kernel="tile16_legacy", out_dtype=np.int32)
    async with npp.open_pipeline(device="emulator", kernel="tile16_legacy") as pipe:
        with pytest.raises(npp.DTypeError) as ran:
            await pipe.matmul(a, b, out_dtype=np.int32)
        with pytest.raises(npp.DTypeError) as pipe_planned:
            pipe.plan(32, 48, 16, np.int32)
        c = await pipe.matmul(a, b)
        assert pipe.plan(32, 48, 16).out_dtype == "int8"
    assert message(ran) == message(planned) == message(pipe_planned)
    assert "'tile16_legacy'" in message(ran)
    assert c.dtype == np.int8 and np.array_equal(c, seed_wrapper_matmul(a, b))


@pytest.mark.anyio
async def test_the_gemm_default_stays_the_exact_int32_product(rng):
    a, b = random_int8(rng, (70, 130)), random_int8(rng, (130, 50))
    async with npp.open_pipeline(device="emulator") as pipe:
        c = await pipe.matmul(a, b)
        c32 = await pipe.matmul(a, b, out_dtype=np.int32, saturation="saturate")
    assert c.dtype == c32.dtype == np.int32
    assert np.array_equal(c, exact(a, b)) and np.array_equal(c32, exact(a, b))


# ---------------------------------------------------------------------------
# rounding and saturation mean nothing for the exact int32 product


@pytest.mark.anyio
@pytest.mark.parametrize(
    "options", [{"rounding": "half_even"}, {"rounding": "floor"}, {"saturation": "none"}]
)
async def test_rounding_or_saturation_with_int32_output_is_refused(rng, options):
    a, b = random_int8(rng, (16, 16)), random_int8(rng, (16, 16))
    async with npp.open_pipeline(device="emulator") as pipe:
        with pytest.raises(npp.ShapeError, match="with out_dtype int32") as raised:
            await pipe.matmul(a, b, out_dtype=np.int32, **options)
        assert pipe.active_requests == 0
    assert "Pass out_dtype=np.int8 to requantise" in message(raised)


# ---------------------------------------------------------------------------
# an infeasible plan names the limit that binds


def test_the_batch_cap_binds_inside_the_budget():
    with pytest.raises(npp.PlanError) as raised:
        npp.plan_batches(50_000, 50_000, 50_000)
    text = message(raised)
    assert text.startswith("every legal block that fits the pinned-memory budget of 4194304")
    assert "needs more than 131072 batches" in text and "split the product" in text


def test_a_budget_too_small_for_any_block_still_blames_the_budget():
    with pytest.raises(npp.PlanError) as raised:
        npp.plan_batches(1500, 2048, 512, memory_budget=200)
    text = message(raised)
    assert text.startswith("no block fits the pinned-memory budget of 200 bytes")
    assert "batches" not in text


def test_the_watchdog_still_blames_the_watchdog():
    with pytest.raises(npp.PlanError) as raised:
        npp.plan_batches(256, 256, 256, profile=npp.get_profile("npu1").slowed(10_000))
    text = message(raised)
    assert text.startswith("every legal block runs too long on npu1 slowed x10000")
    assert "budget" not in text and "batches" not in text
