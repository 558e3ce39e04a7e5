"""The planner: coverage, limits, choice, errors, the simulator, and the seed calibration."""

import itertools
import json
import math
import re
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npu_pipeline import calibration, planner
from npu_pipeline.contract import load_contract
from npu_pipeline.errors import ContractError, DTypeError, PlanError, ShapeError
from npu_pipeline.planner import (
    MAX_BATCHES,
    WATCHDOG_FRACTION,
    Plan,
    Schedule,
    plan_batches,
    simulate,
)
from npu_pipeline.profile_lookup import get_profile
from npu_pipeline.profiles import NPU1
from npu_pipeline.reference import MAX_EXACT_K
from npu_pipeline.timeline import NA_ONE_BATCH, NA_ONE_STAGE

KERNELS = ("gemm_i8_i32", "tile16_legacy")
PROFILES = ("npu1", "npu2", "cpu")


@pytest.fixture(autouse=True)
def no_calibration(monkeypatch):
    """Deterministic profiles: the cpu profile uses its documented defaults."""
    monkeypatch.setenv(calibration.ENV_VAR, "off")


def suggested_budget(error: PlanError) -> int:
    return int(re.search(r"memory_budget=(\d+)", str(error))[1])


def plan_within(*shape, memory_budget, **kwargs) -> tuple[Plan, int]:
    """The plan for ``memory_budget``; if that is too small, the plan for the budget the
    error suggests (which must then work). Returns the plan and the budget it had."""
    try:
        return plan_batches(*shape, memory_budget=memory_budget, **kwargs), memory_budget
    except PlanError as error:
        budget = suggested_budget(error)  # only the budget may be too small here
        assert memory_budget is not None and budget > memory_budget
        return plan_batches(*shape, memory_budget=budget, **kwargs), budget


def check_coverage_grid(plan: Plan) -> None:
    """Every (m, k, n) of the product is covered by exactly one batch, counted on a grid.

    The grid has one cell per run of elements between batch boundaries
    (coordinate compression), so it is exact for any shape and stays small.
    """
    cuts = []
    for axis, extent in zip(("m_range", "k_range", "n_range"), plan.shape, strict=True):
        edges = {0, extent}
        for b in plan.batches:
            edges.update(getattr(b, axis))
        cuts.append(sorted(edges))
    grid = np.zeros([len(c) - 1 for c in cuts], dtype=np.int32)
    for b in plan.batches:
        grid[
            tuple(
                slice(c.index(r[0]), c.index(r[1]))
                for c, r in zip(cuts, (b.m_range, b.k_range, b.n_range), strict=True)
            )
        ] += 1
    assert (grid == 1).all()


def check_coverage_intervals(plan: Plan) -> None:
    """The same by interval logic: output blocks tile C, each one's k-blocks tile [0, K)
    consecutively, in i, j, k order."""
    m, k, n = plan.shape

    def tiles(ranges, extent):
        ranges = sorted(set(ranges))
        return (
            ranges[0][0] == 0
            and ranges[-1][1] == extent
            and all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(ranges))
        )

    outputs = [(b.m_range, b.n_range) for b in plan.batches]
    assert tiles([r for r, _ in outputs], m) and tiles([r for _, r in outputs], n)
    groups = [list(g) for _, g in itertools.groupby(plan.batches, lambda b: (b.m_range, b.n_range))]
    assert len(groups) == len({b.m_range for b in plan.batches}) * len(
        {b.n_range for b in plan.batches}
    )  # each output block once, its k-blocks consecutive
    assert [(g[0].m_range, g[0].n_range) for g in groups] == sorted(
        (g[0].m_range, g[0].n_range) for g in groups
    )  # i-block outer, j-block inner
    for group in groups:
        ks = [b.k_range for b in group]
        assert ks[0][0] == 0 and ks[-1][1] == k
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ks))
        assert [b.first for b in group] == [True] + [False] * (len(group) - 1)
        assert [b.final for b in group] == [False] * (len(group) - 1) + [True]


def check_limits(plan: Plan, budget: int | None = None) -> None:
    """Every constraint the planner promises."""
    contract = load_contract(plan.kernel)
    profile = get_profile(plan.profile)
    spec = contract.target(plan.generation)
    assert plan.profile == profile.name and plan.generation == profile.generation
    assert 1 <= plan.slots <= profile.runs_in_flight
    assert plan.memory_bytes == plan.slots * plan.slot_bytes
    assert plan.memory_bytes <= (budget if budget is not None else profile.memory_budget_bytes)
    assert len(plan.batches) <= MAX_BATCHES
    assert plan.n_runs == sum(b.n_runs for b in plan.batches)
    for index, b in enumerate(plan.batches):
        assert b.index == index and b.slot == index % plan.slots
        contract.check_block(b.block, plan.generation)
        assert profile.run_seconds(contract, b.block) <= profile.watchdog_s / WATCHDOG_FRACTION
        assert all(x <= y for x, y in zip(b.block, plan.block, strict=True))
        sizes = contract.run_buffer_bytes(b.block)
        out = contract.output_buffer.name
        assert b.bytes_out == b.n_runs * sizes[out]
        assert b.bytes_in == b.n_runs * (sum(sizes.values()) - sizes[out])
        assert b.bytes_in + b.bytes_out <= plan.slot_bytes
        extents = [r[1] - r[0] for r in (b.m_range, b.k_range, b.n_range)]
        if contract.semantic == "block_gemm":
            assert b.n_runs == 1
            padded = b.block
        else:
            assert b.block == spec.max_block
            padded = (b.block[0], b.block[1] * b.n_runs, b.block[2])
        for extent, size, step in zip(extents, padded, spec.block_granularity, strict=True):
            assert extent <= size < extent + step  # padded up to the granularity, no more


# ---------------------------------------------------------------------------
# Coverage and limits


@given(
    shape=st.tuples(st.integers(1, 1100), st.integers(1, 700), st.integers(1, 1100)),
    kernel=st.sampled_from(KERNELS),
    budget=st.one_of(st.none(), st.integers(768, 2**21)),
)
def test_shapes_are_covered_exactly_once(shape, kernel, budget):
    if kernel == "tile16_legacy":
        shape = tuple(min(x, 200) for x in shape)  # one batch per output tile: keep it small
    plan, budget = plan_within(*shape, kernel=kernel, memory_budget=budget)
    check_coverage_grid(plan)
    check_coverage_intervals(plan)
    check_limits(plan, budget)


@given(
    shape=st.tuples(st.integers(1, 3000), st.integers(1, 5000), st.integers(1, 3000)),
    profile=st.sampled_from(PROFILES),
    log_budget=st.floats(12, 27),
    slots=st.one_of(st.none(), st.integers(1, 4)),
)
def test_budgets_and_limits_hold_for_gemm(shape, profile, log_budget, slots):
    plan, budget = plan_within(
        *shape, profile=profile, memory_budget=int(2**log_budget), slots=slots
    )
    check_coverage_intervals(plan)
    check_limits(plan, budget)
    if slots is not None:
        assert plan.slots == slots


@given(
    shape=st.tuples(st.integers(1, 300), st.integers(1, 3000), st.integers(1, 300)),
    budget=st.integers(768, 2**20),
)
def test_budgets_and_limits_hold_for_tile_pairs(shape, budget):
    plan = plan_batches(*shape, kernel="tile16_legacy", memory_budget=budget)
    check_coverage_intervals(plan)
    check_limits(plan, budget)
    assert plan.block == (16, 16, 16)
    m, k, n = (-(-x // 16) for x in shape)
    assert plan.n_runs == m * k * n


def test_whisper_shapes_respect_the_default_budget():
    for shape in ((1500, 512, 1536), (1500, 2048, 512), (1500, 64, 1500), (1500, 1500, 64)):
        for profile in PROFILES:
            plan = plan_batches(*shape, profile=profile)
            check_coverage_intervals(plan)
            check_limits(plan)


def test_first_and_final_flags_with_several_k_blocks():
    plan = plan_batches(300, 4000, 300, memory_budget=2**20)
    assert len({b.k_range for b in plan.batches}) > 1
    check_coverage_grid(plan)
    check_coverage_intervals(plan)


def test_batch_blocks_are_padded_edges():
    plan = plan_batches(1500, 2048, 512, memory_budget=64 * 2**20)
    last = plan.batches[-1]
    assert last.m_range[1] == 1500
    step = load_contract("gemm_i8_i32").target("npu1").block_granularity[0]
    assert last.block[0] == -(-(last.m_range[1] - last.m_range[0]) // step) * step


# ---------------------------------------------------------------------------
# Choice


def test_plans_are_deterministic():
    for kwargs in ({}, {"profile": "npu2"}, {"kernel": "tile16_legacy"}, {"profile": "cpu"}):
        assert plan_batches(300, 700, 500, **kwargs) == plan_batches(300, 700, 500, **kwargs)


def test_given_slots_are_honoured_and_more_slots_never_slower():
    walls = []
    for slots in (1, 2, 3, 4):
        plan = plan_batches(1500, 512, 1536, slots=slots, memory_budget=64 * 2**20)
        assert plan.slots == slots
        walls.append(plan.estimate.wall_s)
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(walls))
    best = plan_batches(1500, 512, 1536, memory_budget=64 * 2**20)
    assert best.estimate.wall_s <= min(walls) * (1 + 1e-9)


def test_choice_is_the_best_candidate():
    """Branch and bound finds what trying every candidate and slot count finds.

    Candidates with many batches are not simulated here (that takes minutes);
    their execute stage alone, one hand-off per batch, already outlasts the plan.
    """
    for shape, kernel, profile, budget in (
        ((1500, 2048, 512), "gemm_i8_i32", NPU1, 4 * 2**20),
        ((700, 900, 300), "gemm_i8_i32", get_profile("cpu"), 2**20),
        ((100, 3000, 50), "tile16_legacy", NPU1, 10_000),
    ):
        plan = plan_batches(
            *shape, kernel=kernel, profile=profile, memory_budget=budget, latency_budget_s=math.inf
        )
        contract = load_contract(kernel)
        costs = planner._Costs(contract, profile, requantise=plan.out_dtype != "int32")
        best = None
        for candidate in planner._candidates(shape, contract, costs):
            if planner._problem(candidate, costs):
                continue
            if candidate.n_batches * profile.batch_overhead_s > plan.estimate.wall_s:
                continue
            for slots in range(1, profile.runs_in_flight + 1):
                if slots * candidate.slot_bytes <= budget:
                    wall = simulate(candidate.durations(costs), slots, costs.startup_s).wall_s
                    best = wall if best is None else min(best, wall)
        assert plan.estimate.wall_s == pytest.approx(best, rel=1e-9)


def test_more_memory_never_predicts_slower():
    walls = [
        plan_batches(1500, 2048, 512, memory_budget=budget).estimate.wall_s
        for budget in (2**20, 4 * 2**20, 16 * 2**20, 64 * 2**20)
    ]
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(walls))


def test_int8_output_costs_a_requantisation_pass():
    exact = plan_batches(1500, 512, 512, slots=1)
    requant = plan_batches(1500, 512, 512, slots=1, out_dtype=np.int8)
    assert requant.out_dtype == "int8" and exact.out_dtype == "int32"
    assert requant.estimate.busy_s["accumulate"] > exact.estimate.busy_s["accumulate"]


def test_planning_is_fast():
    plan_batches(1500, 2048, 512)  # imports and contract loading out of the way
    start = time.perf_counter()
    plan_batches(1500, 2048, 512)
    assert time.perf_counter() - start < 0.5  # measured: about 2 ms


def test_accepts_contract_objects_profile_objects_and_numpy_ints():
    contract = load_contract("gemm_i8_i32")
    plan = plan_batches(np.int64(100), 200, 300, kernel=contract, profile=NPU1.slowed(20))
    assert plan.kernel == "gemm_i8_i32" and plan.profile == "npu1 slowed x20"
    assert "npu1 slowed x20" in plan.explain()


# ---------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "shape", [(0, 1, 1), (1, 0, 1), (1, 1, -3), (1.5, 2, 2), (True, 2, 2), (1, MAX_EXACT_K + 1, 1)]
)
def test_bad_shapes_are_shape_errors(shape):
    with pytest.raises(ShapeError):
        plan_batches(*shape)


def test_bad_out_dtype_is_a_dtype_error():
    with pytest.raises(DTypeError):
        plan_batches(16, 16, 16, out_dtype=np.float32)


@pytest.mark.parametrize("slots", [0, 5, 2.0, True])
def test_bad_slots_are_plan_errors(slots):
    with pytest.raises(PlanError, match="slots"):
        plan_batches(64, 64, 64, slots=slots)


@pytest.mark.parametrize("budget", [0, -1, 1.5])
def test_bad_budgets_are_plan_errors(budget):
    with pytest.raises(PlanError, match="memory_budget"):
        plan_batches(64, 64, 64, memory_budget=budget)


def test_unknown_profile_and_kernel():
    with pytest.raises(PlanError, match="no device profile"):
        plan_batches(64, 64, 64, profile="npu9")
    with pytest.raises(ContractError):
        plan_batches(64, 64, 64, kernel="no_such_kernel")


@pytest.mark.parametrize(
    "shape, kernel, slots",
    [
        ((1500, 2048, 512), "gemm_i8_i32", None),
        ((1500, 2048, 512), "gemm_i8_i32", 3),
        ((300, 300, 300), "tile16_legacy", None),
        ((300, 300, 300), "tile16_legacy", 2),
    ],
)
def test_too_small_budget_names_the_smallest_that_works(shape, kernel, slots):
    with pytest.raises(PlanError, match="pinned-memory budget") as info:
        plan_batches(*shape, kernel=kernel, slots=slots, memory_budget=200)
    budget = suggested_budget(info.value)
    plan = plan_batches(*shape, kernel=kernel, slots=slots, memory_budget=budget)
    assert plan.memory_bytes <= budget
    with pytest.raises(PlanError):
        plan_batches(*shape, kernel=kernel, slots=slots, memory_budget=budget - 1)


def test_watchdog_limit_names_the_slow_down_that_works():
    with pytest.raises(PlanError, match="watchdog") as info:
        plan_batches(256, 256, 256, profile=NPU1.slowed(10_000))
    factor = float(re.search(r"at most x([0-9.e+]+)", str(info.value))[1])
    plan = plan_batches(256, 256, 256, profile=NPU1.slowed(factor * 0.999))
    check_limits(plan)


def test_too_many_batches_is_a_plan_error():
    with pytest.raises(PlanError, match="batches"):
        plan_batches(20_000, 64, 20_000, kernel="tile16_legacy")


# ---------------------------------------------------------------------------
# The simulator

durations_lists = st.lists(
    st.tuples(*(st.floats(0, 1, allow_nan=False, allow_subnormal=False),) * 3),
    min_size=0,
    max_size=40,
)


@given(durations=durations_lists)
def test_one_slot_overlaps_nothing(durations):
    schedule = simulate(durations, 1)
    assert schedule.wall_s == pytest.approx(sum(map(sum, durations)), rel=1e-9, abs=1e-12)


@given(durations=durations_lists)
def test_more_slots_never_slower_and_eta_in_range(durations):
    walls = []
    for slots in (1, 2, 3, 4, 8):
        schedule = simulate(durations, slots)
        walls.append(schedule.wall_s)
        estimate = schedule.estimate(sequential_s=0.0)
        eta = estimate.overlap_efficiency
        assert (eta is None) == (estimate.overlap_na_reason is not None)
        assert eta is None or 0.0 <= eta <= 1.0
        assert estimate.wall_s >= max(estimate.busy_s.values()) - 1e-12
        assert estimate.bound in ("pack", "execute", "accumulate")
        assert estimate.bubbles_s >= 0.0
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(walls))


@given(durations=durations_lists, slots=st.integers(1, 4))
def test_schedule_obeys_the_rules(durations, slots):
    s = simulate(durations, slots)
    for i, (p, x, q) in enumerate(durations):
        assert s.pack[i][1] - s.pack[i][0] == pytest.approx(p, abs=1e-12)
        assert s.execute[i][1] - s.execute[i][0] == pytest.approx(x, abs=1e-12)
        assert s.accumulate[i][1] - s.accumulate[i][0] == pytest.approx(q, abs=1e-12)
        assert s.execute[i][0] >= s.pack[i][1] and s.accumulate[i][0] >= s.execute[i][1]
        if i:
            for stage in (s.pack, s.execute, s.accumulate):  # one worker per stage
                assert stage[i][0] >= stage[i - 1][1]
        if i >= slots:  # the slot is free only after its previous batch was accumulated
            assert s.pack[i][0] >= s.accumulate[i - slots][1]


def test_simulator_worked_example_and_efficiency():
    # Three equal batches of (1, 2, 1) s, two slots: execute-bound, its 6 s
    # plus the first pack and the last accumulate.
    s = simulate([(1.0, 2.0, 1.0)] * 3, 2)
    assert s.execute == ((1.0, 3.0), (3.0, 5.0), (5.0, 7.0))
    assert s.wall_s == 8.0
    e = s.estimate(sequential_s=0.0)
    assert e.busy_s == {"pack": 3.0, "execute": 6.0, "accumulate": 3.0}
    assert e.bound == "execute" and e.bubbles_s == 0.0
    assert e.overlap_efficiency == pytest.approx((12 - 8) / (12 - 6))
    # A single non-zero stage, or a single batch: nothing could overlap, eta is n/a.
    one_stage = simulate([(0.0, 1.0, 0.0)] * 2, 1).estimate(0.0)
    assert (one_stage.overlap_efficiency, one_stage.overlap_na_reason) == (None, NA_ONE_STAGE)
    one_batch = simulate([(1.0, 2.0, 1.0)], 2).estimate(0.0)
    assert (one_batch.overlap_efficiency, one_batch.overlap_na_reason) == (None, NA_ONE_BATCH)
    assert e.overlap_na_reason is None
    assert simulate([], 2).wall_s == 0.0


def test_simulator_rejects_zero_slots():
    with pytest.raises(PlanError):
        simulate([(1.0, 1.0, 1.0)], 0)


def test_schedule_as_timeline_matches_the_estimate():
    plan = plan_batches(1500, 512, 1536)
    timeline = plan.schedule.to_timeline()
    assert isinstance(plan.schedule, Schedule)
    assert timeline.wall_s() == pytest.approx(plan.estimate.wall_s)
    for stage, busy in plan.estimate.busy_s.items():
        assert timeline.busy_s()[stage] == pytest.approx(busy)
    assert timeline.overlap_efficiency() == pytest.approx(plan.estimate.overlap_efficiency)


# ---------------------------------------------------------------------------
# Output and the seed calibration


def test_explain_and_to_dict():
    plan = plan_batches(1500, 2048, 512)
    text = plan.explain()
    for needle in ("1500", "gemm_i8_i32", "npu1", "MODELLED", "overlap efficiency", "wall"):
        assert needle in text
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["modelled"] is True
    assert data["block"] == list(plan.block) and len(data["batches"]) == len(plan.batches)
    assert set(data["estimate"]["busy_s"]) == {"pack", "execute", "accumulate"}


def test_seed_calibration():
    """512^3 with the seed's kernel on npu1: its 32,768 calls, and its measured 15.11 s."""
    legacy = plan_batches(512, 512, 512, kernel="tile16_legacy", profile="npu1")
    assert legacy.n_runs == 32 * 32 * 32
    assert legacy.estimate.sequential_s == pytest.approx(15.11, rel=0.10)
    # Pipelining the host work around the same per-tile calls leaves the
    # device's own per-run cost: 32,768 runs at Phoenix's 6.3k runs/s with runs
    # in flight (docs/hardware-facts.md#performance-anchors) is over 5 s.
    assert 32 * 32 * 32 / 6.3e3 < legacy.estimate.wall_s < 6.0
    gemm = plan_batches(512, 512, 512, kernel="gemm_i8_i32", profile="npu1")
    assert gemm.n_runs == 1
    assert gemm.estimate.wall_s < legacy.estimate.sequential_s / 1000


def test_a_batch_that_finds_the_device_idle_pays_the_startup():
    # One slot: every batch waits for the one before to be accumulated, so the
    # device is idle at each submission and every execute pays the startup.
    alone = simulate([(1.0, 1.0, 1.0)] * 3, 1, startup_s=0.5)
    assert alone.wall_s == pytest.approx(3 * 3.0 + 3 * 0.5)
    # Two slots: batch 1 is packed (t=2) while batch 0 still executes (to 2.5):
    # it is queued behind it and pays no startup; only batch 0 does.
    queued = simulate([(1.0, 1.0, 1.0)] * 2, 2, startup_s=0.5)
    assert queued.execute == ((1.0, 2.5), (2.5, 3.5))
