"""Calibrate the ``cpu`` profile's host rates on the machine in use.

The emulated NPU runs on this host, so its speeds are this host's: how fast
numba packs int8 blocks into a slot, how fast it folds int32 partials into C,
and how fast the emulator's exact block product runs
(``npu_pipeline.exact.exact_product``: float32 BLAS over K chunks
of at most 1024, exact for int8 data). A short
measurement (well under 3 s once packing's kernels are compiled) finds them;
the result is cached on disk under ``$XDG_CACHE_HOME/npu_pipeline/`` (default
``~/.cache``), keyed by host name, CPU count, BLAS threads in effect and
library versions, so it runs once per machine, install and thread setting.

The measurement is a median over repeats, but a machine busy with other work
measures slow. So a cached calibration is not trusted forever:

- it records the load it was measured under (``os.getloadavg()``'s one-minute
  figure per CPU, :attr:`Calibration.load_per_cpu`); when the machine is now
  quieter than that (and that was above :data:`QUIET_LOAD`), it is measured
  again, and the quieter figures replace the cache;
- it expires after :data:`MAX_AGE_S` (a day): load averages trail bursts, so
  a disturbed measurement that the load did not show lives at most that long;
- ``NPU_PIPELINE_CALIBRATION=refresh`` measures again and replaces the cached
  figures (once per process).

A calibration is only the starting point: the pipeline corrects the model
from what it measures while it runs (:mod:`npu_pipeline.learning`), so a bad
cache costs a few badly planned calls, not every call.

Set ``NPU_PIPELINE_CALIBRATION=off`` (or ``0``, ``false``, ``no``) to skip it
and use the documented defaults (:data:`npu_pipeline.profiles.CPU_DEFAULTS`):
tests do, so their plans are the same on every machine. If the packing
kernels cannot be imported or called, the defaults are used too and the
profile's sources say why.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npu_pipeline.benchmarks import median_seconds, stream_runs
from npu_pipeline.contract import KernelContract
from npu_pipeline.profiles import CPU, DeviceProfile

if TYPE_CHECKING:
    from npu_pipeline.planner import Plan

#: Environment variable that turns calibration off.
ENV_VAR = "NPU_PIPELINE_CALIBRATION"
_OFF = ("off", "0", "false", "no")

# Measurement sizes: slots of 4 MiB, like the planner's blocks and larger than
# most L2 caches, so the rates are memory rates; small enough for the whole
# calibration to stay well under 3 s.
_PACK_SHAPE = (2000, 2000)  # ragged on purpose: packing pads to the block
_PACK_BLOCK = (2048, 2048)
_ACC_BLOCK = (1024, 1024)
_EXACT_BLOCK = (512, 1024, 512)
_REPEAT = 15
#: The host path's products are small (at most 2 ms): its rate is measured on one.
_HOST_SHAPE = (256, 256, 256)
_STREAM_RUNS = 20  # runs per timed stream of back-to-back runs

#: A cached calibration older than this is measured again, seconds. Measuring
#: takes well under a second once numba's kernels are compiled: a day's
#: expiry costs nothing noticeable and bounds how long a disturbed
#: measurement that the load average missed can mislead the planner.
MAX_AGE_S = 24 * 3600.0

#: One-minute load average per CPU below which a machine counts as quiet: a
#: calibration measured under at most this load is not re-measured for load.
QUIET_LOAD = 0.5


@dataclass(frozen=True)
class Calibration:
    """Host rates measured on one machine.

    Attributes:
        pack_bytes_per_s: ``packing.pack_block`` output bytes per second.
        accumulate_bytes_per_s: ``packing.accumulate_block`` int32 bytes read per second.
        host_ops_per_s: int8 ops per second of the host path's exact product
            (:func:`npu_pipeline.exact.host_matmul`, whole BLAS calls, as on an
            idle device) on a small product (:data:`_HOST_SHAPE`).
        exact_ops_per_s: int8 ops (2 per multiply-add) per second of the emulator's
            exact product (int8 -> float32 casts and float32 BLAS).
        dispatch_s: the emulated NPU's cost of one run beyond its compute, seconds:
            the round trip (start, device thread, wait, syncs) of the smallest
            legal block, less that block's compute at ``exact_ops_per_s``.
        queued_dispatch_s: the same for runs kept in flight back to back (each
            submitted while the one before it executes): the time per run of
            such a stream, less its compute, seconds.
        host: the cache key the figures belong to.
        measured_at: when, seconds since the epoch.
        seconds: how long the measurement took (compilation excluded).
        load_per_cpu: one-minute load average per CPU when it was measured
            (runnable tasks per CPU; 0 where the platform has no load average;
            infinite when unknown, as in cache files written before it was
            recorded, which are therefore measured again).
    """

    pack_bytes_per_s: float
    accumulate_bytes_per_s: float
    exact_ops_per_s: float
    host_ops_per_s: float
    dispatch_s: float
    queued_dispatch_s: float
    host: str
    measured_at: float
    seconds: float
    load_per_cpu: float = math.inf


def calibration_mode() -> str:
    """``"off"``, ``"refresh"`` (measure again, replacing the cache) or ``"on"``,
    from ``NPU_PIPELINE_CALIBRATION``."""
    value = os.environ.get(ENV_VAR, "on").strip().lower()
    if value in _OFF:
        return "off"
    return "refresh" if value == "refresh" else "on"


def calibration_enabled() -> bool:
    """False when ``NPU_PIPELINE_CALIBRATION`` turns calibration off."""
    return calibration_mode() != "off"


def host_key() -> str:
    """What a calibration is valid for: host, CPU count, BLAS threads and library versions."""
    import numba
    from threadpoolctl import threadpool_info

    from npu_pipeline import __version__

    # The exact-compute rate scales with the BLAS threads in effect, which a
    # caller may limit (the benchmark does): each setting has its own figures.
    blas_threads = max(
        (pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"),
        default=1,
    )
    return (
        f"{platform.node()}|{platform.machine()}|cpus={os.cpu_count()}|"
        f"blas_threads={blas_threads}|"
        f"npu_pipeline={__version__}|numpy={np.__version__}|numba={numba.__version__}"
    )


def load_per_cpu() -> float:
    """This machine's one-minute load average per CPU (0.0 where there is none)."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def is_trusted(calibration: Calibration, key: str, now: float, load: float) -> bool:
    """Whether a cached ``calibration`` may be used for host ``key`` at time ``now``
    (seconds since the epoch) under ``load`` (per CPU): same host and versions, younger
    than :data:`MAX_AGE_S`, and measured under no more load than ``load`` unless quiet."""
    return (
        calibration.host == key
        and 0 <= now - calibration.measured_at < MAX_AGE_S
        and calibration.load_per_cpu <= max(QUIET_LOAD, load)
    )


def cache_path(key: str) -> Path:
    """The cache file of calibration ``key``."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "npu_pipeline" / f"calibration-{digest}.json"


def measure() -> Calibration:
    """Measure the three host rates now (packing kernels compiled first, not timed).

    Raises:
        ImportError: ``npu_pipeline.packing`` is not available.
    """
    from npu_pipeline import packing
    from npu_pipeline.contract import load_contract
    from npu_pipeline.exact import Scratch, exact_product, host_matmul

    contract = load_contract("gemm_i8_i32")
    r, s, t = contract.target(CPU.generation).micro_tile
    rng = np.random.default_rng(0)
    src = rng.integers(-128, 128, size=_PACK_SHAPE, dtype=np.int8)
    slot = np.empty(_PACK_BLOCK[0] * _PACK_BLOCK[1], dtype=np.int8)
    rows, cols = (0, _PACK_SHAPE[0]), (0, _PACK_SHAPE[1])
    partial = rng.integers(-(2**20), 2**20, size=_ACC_BLOCK[0] * _ACC_BLOCK[1], dtype=np.int32)
    acc = np.zeros(_ACC_BLOCK, dtype=np.int32)
    m, k, n = _EXACT_BLOCK
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)

    def pack() -> None:
        packing.pack_block(src, rows, cols, slot, _PACK_BLOCK, contract.layout, (r, s))

    def accumulate() -> None:
        packing.accumulate_block(partial, _ACC_BLOCK, contract.layout, (r, t), acc, False)

    pack()  # first calls compile (or load) the numba kernels: not part of the rate
    accumulate()
    load = load_per_cpu()
    start = time.perf_counter()
    pack_s = median_seconds(pack, repeat=_REPEAT)
    acc_s = median_seconds(accumulate, repeat=_REPEAT)

    scratch = Scratch()
    a32, b32 = np.empty(a.shape, np.float32), np.empty(b.shape, np.float32)

    def exact() -> None:
        # What the emulator does per run: cast the int8 operands into reused
        # float32 arrays, then multiply exactly.
        np.copyto(a32, a)
        np.copyto(b32, b)
        exact_product(a32, b32, scratch)

    exact_s = median_seconds(exact, repeat=_REPEAT)
    exact_ops_per_s = 2 * m * k * n / exact_s
    hm, hk, hn = _HOST_SHAPE
    ha = rng.integers(-128, 128, size=(hm, hk), dtype=np.int8)
    hb = rng.integers(-128, 128, size=(hk, hn), dtype=np.int8)
    hc = np.empty((hm, hn), dtype=np.int32)
    host_s = median_seconds(
        lambda: host_matmul(ha, hb, hc, single_thread=False), repeat=3 * _REPEAT
    )
    return Calibration(
        pack_bytes_per_s=slot.nbytes / pack_s,
        accumulate_bytes_per_s=partial.nbytes / acc_s,
        exact_ops_per_s=exact_ops_per_s,
        host_ops_per_s=2 * hm * hk * hn / host_s,
        **_emulator_dispatch_seconds(contract, exact_ops_per_s),
        host=host_key(),
        measured_at=time.time(),
        seconds=time.perf_counter() - start,
        load_per_cpu=load,
    )


def _emulator_dispatch_seconds(contract: KernelContract, exact_ops_per_s: float) -> dict:
    """Per-run cost of the emulated NPU beyond compute, from the smallest legal block:
    ``dispatch_s`` of a lone run, ``queued_dispatch_s`` of runs kept in flight."""
    from npu_pipeline.device import NpuDevice

    block = contract.target(CPU.generation).block_granularity
    m, k, n = block
    compute = 2 * m * k * n / exact_ops_per_s
    with NpuDevice.open(contract, device="emulator", profile=CPU) as device:
        slots = [device.allocate_slot(block) for _ in range(2)]
        round_trip = median_seconds(
            lambda: device.wait(device.start(slots[0], block)), repeat=3 * _REPEAT
        )

        per_run = (
            median_seconds(lambda: stream_runs(device, slots, block, _STREAM_RUNS), repeat=5)
            / _STREAM_RUNS
        )
    # Never below the cost of two thread hand-offs (a lone run) or of one
    # (queued): a quiet machine must not make the planner believe runs are free.
    return {
        "dispatch_s": max(round_trip - compute, 20e-6),
        "queued_dispatch_s": min(max(per_run - compute, 10e-6), max(round_trip - compute, 20e-6)),
    }


def load_or_measure(refresh: bool = False) -> Calibration:
    """The cached calibration of this host, measuring (and caching) it if there is
    none, it is not trusted any more (:func:`is_trusted`), or ``refresh`` is true."""
    key = host_key()
    path = cache_path(key)
    try:
        cached = Calibration(**json.loads(path.read_text()))
        if not refresh and is_trusted(cached, key, time.time(), load_per_cpu()):
            return cached
    except (OSError, ValueError, TypeError):
        pass  # no cache, or a damaged one or one of an older format: measure again
    calibration = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename, so a concurrent reader never sees half a file.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(dataclasses.asdict(calibration), tmp)
        os.replace(tmp.name, path)
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time
    return calibration


def with_host_rates(base: DeviceProfile, calibration: Calibration) -> DeviceProfile:
    """``base`` with this host's measured pack, accumulate and exact-product rates;
    device rates unchanged.

    This is how a real NPU profile is given the host stages of the machine in
    use: the NPU side stays modelled, the host side (including the host path's
    exact product) is measured.
    """
    where = f"measured on this host by npu_pipeline.calibration ({calibration.host})"
    measured = {
        "pack_bytes_per_s": where,
        "accumulate_bytes_per_s": where,
        "host_ops_per_s": f"{where}: the host path's exact product of {_HOST_SHAPE}",
    }
    return dataclasses.replace(
        base,
        pack_bytes_per_s=calibration.pack_bytes_per_s,
        accumulate_bytes_per_s=calibration.accumulate_bytes_per_s,
        host_ops_per_s=calibration.host_ops_per_s,
        sources=tuple((p, measured.get(p, s)) for p, s in base.sources),
    )


def apply(calibration: Calibration, base: DeviceProfile = CPU) -> DeviceProfile:
    """``base`` with the measured host rates and exact-compute rate, sources updated."""
    where = f"measured on this host by npu_pipeline.calibration ({calibration.host}): "
    rates = tuple((name, calibration.exact_ops_per_s) for name, _ in base.core_ops_per_s)
    measured = {f"core_ops_per_s[{name}]": f"{where}exact float32 BLAS" for name, _ in rates}
    measured["dispatch_s"] = f"{where}emulator round trip of the smallest block, less compute"
    measured["queued_dispatch_s"] = (
        f"{where}emulator runs of the smallest block kept in flight, per run, less compute"
    )
    hosted = with_host_rates(base, calibration)
    return dataclasses.replace(
        hosted,
        dispatch_s=calibration.dispatch_s,
        queued_dispatch_s=calibration.queued_dispatch_s,
        core_ops_per_s=rates,
        sources=tuple((p, measured.get(p, s)) for p, s in hosted.sources),
    )


#: A timed replay's slow-down is this many times the emulator's modelled run
#: time over the target's, so that the emulator keeps up although the host
#: stages share its cores.
KEEP_UP_MARGIN = 2.0


def keep_up_factor(
    plan: Plan, target: DeviceProfile, margin: float = KEEP_UP_MARGIN
) -> tuple[int, float]:
    """The slow-down with which this host's emulator keeps up with ``plan``'s runs
    timed by ``target`` (the profile ``plan`` was made with), and the
    emulator-to-target run-time ratio behind it.

    The calibrated ``cpu`` profile models how long this host's emulator takes
    for a run (its exact product at the measured rate, its dispatch and
    copies), ``target`` how long the NPU would. A timed run ends no
    earlier than its modelled time, but no earlier than its real compute
    either: the model holds only while the slowed time is the longer one. The
    factor is the smallest whole number at least ``margin`` times the largest
    ratio over the plan's blocks.
    """
    from npu_pipeline.contract import load_contract

    contract = load_contract(plan.kernel)
    cpu = calibrated_cpu_profile()
    ratio = max(
        cpu.run_seconds(contract, batch.block) / target.run_seconds(contract, batch.block)
        for batch in plan.batches
    )
    return max(1, math.ceil(margin * ratio)), ratio


def calibrated_cpu_profile() -> DeviceProfile:
    """The ``cpu`` profile: calibrated unless ``NPU_PIPELINE_CALIBRATION=off``."""
    return _cpu_profile(calibration_mode())


@functools.lru_cache(maxsize=3)
def _cpu_profile(mode: str) -> DeviceProfile:
    if mode == "off":
        return CPU
    try:
        return apply(load_or_measure(refresh=mode == "refresh"))
    except Exception as error:  # calibration is optional: never let it break planning
        reason = f"calibration failed ({type(error).__name__}: {error}); default used"
        return dataclasses.replace(
            CPU,
            sources=tuple(
                (p, f"{s} [{reason}]" if s.startswith("default") else s) for p, s in CPU.sources
            ),
        )
