"""Helpers of the pipeline benchmark that decide a goal's figure."""

import numpy as np
import pytest
from conftest import exact, random_int8

from npu_pipeline.benchmarks.pipeline import _concurrent_wall
from npu_pipeline.pipeline import open_pipeline

pytestmark = pytest.mark.anyio


async def test_concurrent_callers_get_their_own_exact_results_in_order(rng):
    """The callers start before the clock and are released together: each result is
    its own input's product (shapes differ, so a mix-up cannot pass), and the wall
    covers the requests."""
    shapes = [(64, 64, 64), (17, 300, 5), (256, 256, 256), (1, 1, 1), (130, 70, 260)]
    inputs = [(random_int8(rng, (m, k)), random_int8(rng, (k, n))) for m, k, n in shapes]
    async with open_pipeline(device="emulator") as pipe:
        wall, results = await _concurrent_wall(pipe, inputs)
        assert pipe.active_requests == 0 and pipe.slots_in_use == 0
    assert wall > 0
    for (a, b), c in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(c, exact(a, b))
