"""The library under pytest-asyncio (strict mode), as an asyncio application's own tests use it.

The rest of the suite runs on asyncio and trio through anyio's plugin; this
file checks that the two plugins live side by side (neither in auto mode).
"""

import numpy as np
import pytest
from conftest import exact, random_int8

import npu_pipeline as npp


@pytest.mark.asyncio
async def test_matmul_under_pytest_asyncio(rng):
    a, b = random_int8(rng, (129, 257)), random_int8(rng, (257, 65))
    async with npp.open_pipeline(device="emulator") as pipe:
        assert pipe.device_info.backend == "emulator"
        c8 = await pipe.matmul(a, b, out_dtype=np.int8, shift=9, rounding="half_even")
        c32 = await pipe.matmul(a, b)
    assert np.array_equal(c32, exact(a, b))
    assert np.array_equal(c8, npp.reference.srs(exact(a, b), 9, "half_even", "saturate"))
