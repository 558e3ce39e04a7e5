"""Shared test set-up.

- Async tests use anyio's pytest plugin: mark them ``@pytest.mark.anyio`` and
  they run once on asyncio and once on trio (the ``anyio_backend`` fixture).
  pytest-asyncio stays in strict mode, so it touches only tests marked
  ``@pytest.mark.asyncio``; neither plugin's auto mode is on.
- The cpu profile is not calibrated in tests (NPU_PIPELINE_CALIBRATION=off),
  so plans are the same on every machine.
- Hypothesis: no per-example deadline (numba and BLAS timings vary on shared
  machines); example counts kept modest so the whole suite stays fast on CI.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Plans must not depend on how busy this machine was when the cpu profile was
# first calibrated: tests use the documented defaults.
os.environ.setdefault("NPU_PIPELINE_CALIBRATION", "off")

settings.register_profile(
    "default",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    """Run every ``@pytest.mark.anyio`` test on both backends."""
    return request.param


@pytest.fixture
def no_emulator_leaks():
    """After the test: no emulator device thread and no emulated BO left behind."""
    yield
    import gc

    from npu_pipeline import emulator

    gc.collect()
    assert emulator.live_device_threads() == 0
    assert emulator.live_bos() == 0


@pytest.fixture
def rng():
    """A seeded generator, so a failure reproduces."""
    return np.random.default_rng(20261124)


def random_int8(rng, shape):
    """Uniform int8 over the whole range, including -128."""
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def exact(a, b):
    """The reference every matmul test compares against."""
    return a.astype(np.int64) @ b.astype(np.int64)


@pytest.fixture(autouse=True, scope="session")
def emulator_holds_the_gil():
    """Every test runs with the emulator holding the GIL where real pyxrt does
    (docs/emulator.md#the-gil), whatever the user default."""
    from npu_pipeline import emulator

    with emulator.emulated_host(hold_gil=True):
        yield
