"""Device profiles: limits and a timing model for one kind of NPU (or the emulator).

A :class:`DeviceProfile` holds what the planner must respect (runs in flight,
watchdog, pinned-memory budget, which contract geometry to use) and what it
predicts with (dispatch cost, DMA bandwidth, compute rate per contract, host
packing and accumulation rates). Three ship with the library:

- ``npu1``: Phoenix / Hawk Point (4 x 4 AIE-ML cores);
- ``npu2``: Strix / Krackan (8 x 4 cores);
- ``cpu``: the emulated NPU on this host (npu1 geometry, CPU speeds). Its
  host rates are measured on first use and cached (:mod:`npu_pipeline.calibration`);
  set ``NPU_PIPELINE_CALIBRATION=off`` to use the documented defaults.

No NPU timing here is measured on hardware by this project: every device time
is *modelled* from public figures (each source names its origin and the section of
``docs/hardware-facts.md`` or ``docs/why.md`` that records it) or is an
assumption, and :meth:`DeviceProfile.parameters` says which for every number.
``docs/cost-model.md`` explains the model.

The device time of one run (:meth:`DeviceProfile.run_seconds`) is

    device_time_scale * (dispatch_s + bytes / dma_bytes_per_s + compute_s)

where ``bytes`` are all the run's buffers and ``compute_s`` spreads the
block's output core tiles over the compute cores in rounds. DMA and compute
are added, not overlapped: an upper bound, and the form the npu2 rates were
fitted in.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from npu_pipeline.contract import KernelContract
from npu_pipeline.errors import PlanError, explain

# ---------------------------------------------------------------------------
# Public figures the model is built from (each cited where it is used).

#: Per-run dispatch of an empty kernel on Strix/Krackan, upper end
#: (docs/hardware-facts.md#setup-and-dispatch-costs).
_NPU2_DISPATCH_S = 80e-6
#: Public int8 GEMM throughput on npu2 (amd/IRON issues 171, 172;
#: docs/hardware-facts.md#peak-and-measured-throughput): (block, ops/s). 7-8 TOPS
#: at 2048^3 is taken as its midpoint.
_NPU2_MEASURED = (((1024, 512, 1024), 3.2e12), ((2048, 2048, 2048), 7.5e12))
#: Marketing peak int8 ops/s (docs/hardware-facts.md#peak-and-measured-throughput):
#: Phoenix 10 TOPS, npu2 about 50 TOPS.
_NPU1_PEAK, _NPU2_PEAK = 10e12, 50e12
#: Compute cores and shim-DMA columns used by the designs
#: (docs/hardware-facts.md#array-geometry).
_NPU1_CORES, _NPU2_CORES = 16, 32
_NPU1_COLUMNS, _NPU2_COLUMNS = 4, 8
#: What one kernel() call cost from Python on Phoenix in the seed's batched
#: wrapper, syncs and a trivial tile kernel included
#: (docs/why.md#what-the-seeds-authors-found-later).
_NPU1_PYTHON_CALL_S = 0.33e-3
#: The seed's measured cost of one per-tile call, all host work included
#: (docs/why.md#the-seeds-measurements).
_SEED_CALL_S = 0.46e-3
#: Device seconds per run with runs in flight, from xrt-smi validate's
#: throughput test (docs/hardware-facts.md#performance-anchors): Phoenix 6.3k
#: runs/s, Strix Halo 78,771 runs/s. Derived: the inverse of those rates.
_NPU1_QUEUED_DISPATCH_S = 1 / 6.3e3
_NPU2_QUEUED_DISPATCH_S = 1 / 78_771
#: Default RLIMIT_MEMLOCK on Linux >= 5.16 (8 MiB; this host: ``ulimit -l`` = 8192 KB).
_TYPICAL_MEMLOCK = 8 * 1024 * 1024


def _fit_npu2() -> tuple[float, float]:
    """(DMA bytes/s, array int8 ops/s) that make the run model reproduce both npu2 figures.

    Solves ``t = dispatch + bytes / bw + ops / rate`` for ``1/bw`` and
    ``1/rate`` from the two public measurements
    (docs/hardware-facts.md#peak-and-measured-throughput), with
    ``t = ops / measured_ops_per_s`` and bytes = i8 A + i8 B + i32 C.
    A derived fit, not a measurement: about 31 GB/s and 12.2 TOPS.
    """
    rows = []
    for (m, k, n), measured in _NPU2_MEASURED:
        ops = 2 * m * k * n
        rows.append((m * k + k * n + 4 * m * n, ops, ops / measured - _NPU2_DISPATCH_S))
    (b1, o1, t1), (b2, o2, t2) = rows
    det = b1 * o2 - b2 * o1
    inv_bw = (t1 * o2 - t2 * o1) / det
    inv_rate = (b1 * t2 - b2 * t1) / det
    return 1.0 / inv_bw, 1.0 / inv_rate


_NPU2_DMA, _NPU2_RATE = _fit_npu2()
_NPU2_CORE_RATE = _NPU2_RATE / _NPU2_CORES
#: Same fraction of peak per core as npu2: per-core peak 10/16 vs 50/32 TOPS.
_NPU1_CORE_RATE = _NPU2_CORE_RATE * (_NPU1_PEAK / _NPU1_CORES) / (_NPU2_PEAK / _NPU2_CORES)
#: DMA scales with the shim columns the designs use (4 on npu1, 8 on npu2).
_NPU1_DMA = _NPU2_DMA * _NPU1_COLUMNS / _NPU2_COLUMNS

#: Contract that stands in for a user contract of the same semantic that a
#: profile has no rate for (a custom build of the same kind of kernel).
_SEMANTIC_STAND_IN = {"block_gemm": "gemm_i8_i32", "tile_pair": "tile16_legacy"}

#: Units of the numeric parameters, for :meth:`DeviceProfile.parameters`.
_UNITS = {
    "runs_in_flight": "runs",
    "watchdog_s": "s",
    "memory_budget_bytes": "bytes",
    "compute_cores": "cores",
    "dispatch_s": "s",
    "queued_dispatch_s": "s",
    "dma_bytes_per_s": "B/s",
    "pack_bytes_per_s": "B/s",
    "accumulate_bytes_per_s": "B/s",
    "batch_overhead_s": "s",
    "seed_call_host_s": "s",
    "host_ops_per_s": "ops/s",
    "host_call_s": "s",
    "device_time_scale": "x",
}


@dataclass(frozen=True)
class DeviceProfile:
    """Limits and timing model of one device kind. All times in seconds, rates per second.

    Attributes:
        name: profile name (``"npu1"``, ``"npu1 slowed x20"``, ...).
        generation: contract target geometry to use (``"npu1"`` or ``"npu2"``).
        description: one line for people.
        runs_in_flight: most runs one hardware context keeps submitted; the
            planner never uses more slots than this.
        watchdog_s: the driver resets the device if no run completes for this long.
        memory_budget_bytes: default pinned host memory for all BO slots, bytes
            (``plan_batches(memory_budget=...)`` overrides it).
        compute_cores: AIE cores a block's output core tiles are spread over.
        queued_dispatch_s: what a run costs the device beyond its DMA and
            compute when it was submitted while the run before it was still
            executing (its submission overlapped that run), seconds; at most
            ``dispatch_s``. The planner's simulation charges ``dispatch_s`` to
            a batch that finds the device idle and this to one queued behind
            another.
        dispatch_s: fixed cost of one run as the pipeline sees it: submit,
            syncs, completion, seconds.
        dma_bytes_per_s: bytes per second moved between host memory and the array.
        core_ops_per_s: int8 ops (2 per multiply-add) per second of ONE core,
            per contract name, as ``(name, rate)`` pairs.
        pack_bytes_per_s: host packing rate, input bytes written per second.
        accumulate_bytes_per_s: host accumulation rate, output bytes read per second.
        batch_overhead_s: host cost of handing one batch to a stage's worker
            thread and back, per stage per batch, seconds.
        seed_call_host_s: host work per kernel call of a per-call Python loop
            like the seed's (slicing, bo.write/read, widening, adding), seconds;
            used only for the sequential-loop baseline.
        host_ops_per_s: int8 ops (2 per multiply-add) per second of an exact
            product computed on the host instead (float32 BLAS,
            :func:`npu_pipeline.exact.host_matmul`): the planner's host path.
        host_call_s: fixed host seconds of one such product (casts, call).
        device_time_scale: multiplies every device time (1 unless slowed).
        sources: ``(parameter, source)`` pairs: the public origin and the docs
            section that records it, derivation, measurement or "assumption".
    """

    name: str
    generation: str
    description: str
    runs_in_flight: int
    watchdog_s: float
    memory_budget_bytes: int
    compute_cores: int
    dispatch_s: float
    queued_dispatch_s: float
    dma_bytes_per_s: float
    core_ops_per_s: tuple[tuple[str, float], ...]
    pack_bytes_per_s: float
    accumulate_bytes_per_s: float
    batch_overhead_s: float
    seed_call_host_s: float
    host_ops_per_s: float
    host_call_s: float
    device_time_scale: float = 1.0
    sources: tuple[tuple[str, str], ...] = ()

    # -- timing model ---------------------------------------------------------

    def core_rate(self, contract: KernelContract) -> float:
        """int8 ops per second of one core running ``contract``.

        A contract this profile has no figure for uses the figure of the
        shipped contract with the same semantic (a custom build of the same
        kind of kernel).
        """
        rates = dict(self.core_ops_per_s)
        if contract.name in rates:
            return rates[contract.name]
        return rates[_SEMANTIC_STAND_IN[contract.semantic]]

    def compute_seconds(self, contract: KernelContract, block: tuple[int, int, int]) -> float:
        """Unscaled compute time of one run of padded ``block`` (m, k, n), seconds.

        The output is cut into the contract's core tiles; the cores take one
        tile each per round, every round streaming all of k. A block smaller
        than the array leaves cores idle.
        """
        m, k, n = block
        cm, _, cn = contract.target(self.generation).core_tile
        tiles = -(-m // cm) * -(-n // cn)
        rounds = -(-tiles // self.compute_cores)
        return rounds * 2 * min(m, cm) * k * min(n, cn) / self.core_rate(contract)

    def transfer_seconds(self, contract: KernelContract, block: tuple[int, int, int]) -> float:
        """Unscaled DMA time of one run's buffers (inputs and output), seconds."""
        return sum(contract.run_buffer_bytes(block).values()) / self.dma_bytes_per_s

    def run_seconds(
        self, contract: KernelContract, block: tuple[int, int, int], queued: bool = False
    ) -> float:
        """Modelled device seconds of one run of padded ``block`` (m, k, n) of ``contract``.

        ``device_time_scale * (dispatch + transfer + compute)``, with
        ``queued_dispatch_s`` in place of ``dispatch_s`` for a run submitted
        while the one before it was still executing (``queued``). The
        emulator uses this as its timing model, the planner for the execute stage.
        """
        dispatch = self.queued_dispatch_s if queued else self.dispatch_s
        return self.device_time_scale * (
            dispatch
            + self.transfer_seconds(contract, block)
            + self.compute_seconds(contract, block)
        )

    def startup_seconds(self) -> float:
        """Extra device seconds of a run that finds the device idle, over a queued one."""
        return self.device_time_scale * (self.dispatch_s - self.queued_dispatch_s)

    def pack_seconds(self, nbytes: int) -> float:
        """Host seconds to pack ``nbytes`` of input into a slot, hand-off included."""
        return self.batch_overhead_s + nbytes / self.pack_bytes_per_s

    def execute_seconds(
        self, contract: KernelContract, block: tuple[int, int, int], n_runs: int = 1
    ) -> float:
        """Seconds of the execute stage for ``n_runs`` queued runs of ``block``, hand-off
        included.

        Runs of one batch go one after another, each queued behind the one
        before: each pays ``queued_dispatch_s``. A batch that finds the device
        idle pays :meth:`startup_seconds` more (the planner's simulation adds it).
        """
        return self.batch_overhead_s + n_runs * self.run_seconds(contract, block, queued=True)

    def host_seconds(self, m: int, k: int, n: int) -> float:
        """Host seconds of the exact (m x k) @ (k x n) product computed on the host.

        Not scaled by ``device_time_scale``: it is host work.
        """
        return self.host_call_s + 2 * m * k * n / self.host_ops_per_s

    def accumulate_seconds(self, nbytes: int) -> float:
        """Host seconds to fold ``nbytes`` of run output into C, hand-off included."""
        return self.batch_overhead_s + nbytes / self.accumulate_bytes_per_s

    # -- variants and description ---------------------------------------------

    def slowed(self, factor: float) -> DeviceProfile:
        """This profile with every device time multiplied by ``factor`` (> 0).

        Named ``"<base> slowed x<total factor>"`` so every table and trace that
        shows the profile name says the times are slowed. Host rates stay.

        Raises:
            PlanError: ``factor`` is not a positive finite number.
        """
        if not 0 < factor < float("inf"):
            raise PlanError(
                explain(
                    f"slow-down factor {factor!r}",
                    "a positive finite number",
                    "Pass e.g. 20 to make runs 20 times longer.",
                )
            )
        scale = self.device_time_scale * factor
        base = _SLOWED.sub("", self.name)
        return dataclasses.replace(self, name=f"{base} slowed x{scale:g}", device_time_scale=scale)

    def source(self, parameter: str) -> str:
        """Where the number of ``parameter`` comes from."""
        return dict(self.sources).get(parameter, "assumption")

    def parameters(self) -> list[tuple[str, float, str, str]]:
        """Every number of the model as ``(parameter, value, unit, source)`` rows."""
        rows = [(p, float(getattr(self, p)), u, self.source(p)) for p, u in _UNITS.items()]
        for contract, rate in self.core_ops_per_s:
            key = f"core_ops_per_s[{contract}]"
            rows.append((key, rate, "ops/s", self.source(key)))
        return rows

    def describe(self) -> str:
        """A table of the profile's parameters with units and sources."""
        lines = [f"profile {self.name} ({self.generation} geometry): {self.description}"]
        for parameter, value, unit, source in self.parameters():
            lines.append(f"  {parameter:<32} {value:>12.4g} {unit:<6} {source}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able form."""
        data = dataclasses.asdict(self)
        data["core_ops_per_s"] = dict(self.core_ops_per_s)
        data["sources"] = dict(self.sources)
        return data


_SLOWED = re.compile(r" slowed x[0-9.eE+-]+$")

_BUDGET_SOURCE = (
    "assumption: half of the default RLIMIT_MEMLOCK of Linux >= 5.16 (8 MiB), leaving room "
    "for instruction BOs and other pinned users; NPU BOs are pinned host memory that counts "
    "against ulimit -l (amdxdna driver; docs/hardware-facts.md#buffer-objects)"
)
_COMMON_SOURCES = (
    (
        "runs_in_flight",
        "at most 4 commands in flight per hardware context (amdxdna driver, aie2_pci.h; "
        "docs/hardware-facts.md#commands-in-flight)",
    ),
    (
        "watchdog_s",
        "the amdxdna driver resets the device after about 2 s without a completion "
        "(timeout_in_sec; docs/hardware-facts.md#the-watchdog)",
    ),
    ("memory_budget_bytes", _BUDGET_SOURCE),
    ("device_time_scale", "1 = not slowed"),
)
_SEED_HOST_SOURCE = (
    "derived: the seed authors' measured 0.46 ms per call (docs/why.md#the-seeds-measurements) "
    "minus the 0.33 ms of the kernel() call itself "
    "(docs/why.md#what-the-seeds-authors-found-later)"
)
_HANDOFF_SOURCE = "assumption: anyio worker-thread hand-off, about 50 us"
_HOST_PRODUCT_SOURCES = (
    (
        "host_ops_per_s",
        "assumption: float32 BLAS on one or two laptop cores, int8 casts included; "
        "npu_pipeline.calibration measures it on the host in use",
    ),
    ("host_call_s", "assumption: two small casts and one BLAS call, about 5 us"),
)
_HOST_SOURCES = (
    *_HOST_PRODUCT_SOURCES,
    ("pack_bytes_per_s", "assumption: one laptop core copying int8 with padding (numba)"),
    ("accumulate_bytes_per_s", "assumption: one laptop core adding int32 partials (numba)"),
    ("batch_overhead_s", _HANDOFF_SOURCE),
    ("seed_call_host_s", _SEED_HOST_SOURCE),
)
_NPU2_FIT = (
    "derived: fitted so that dispatch + bytes/DMA + ops/rate reproduces both public npu2 GEMM "
    "figures (3.2 TOPS at 1024x512x1024, 7.5 TOPS at 2048^3; amd/IRON issues 171, 172; "
    "docs/hardware-facts.md#peak-and-measured-throughput)"
)

_HOST_DEFAULTS = {
    "pack_bytes_per_s": 4e9,
    "accumulate_bytes_per_s": 4e9,
    "batch_overhead_s": 50e-6,
    "seed_call_host_s": _SEED_CALL_S - _NPU1_PYTHON_CALL_S,
    "host_ops_per_s": 100e9,
    "host_call_s": 5e-6,
}

NPU1 = DeviceProfile(
    name="npu1",
    generation="npu1",
    description="Phoenix / Hawk Point NPU (XDNA, 4x4 AIE-ML); all device times MODELLED",
    runs_in_flight=4,
    watchdog_s=2.0,
    memory_budget_bytes=_TYPICAL_MEMLOCK // 2,
    compute_cores=_NPU1_CORES,
    dispatch_s=_NPU1_PYTHON_CALL_S,
    queued_dispatch_s=_NPU1_QUEUED_DISPATCH_S,
    dma_bytes_per_s=_NPU1_DMA,
    # The seed's tile kernel has no public rate; at any plausible rate its
    # 8192 ops take < 0.1 us, noise beside the 330 us dispatch.
    core_ops_per_s=(("gemm_i8_i32", _NPU1_CORE_RATE), ("tile16_legacy", _NPU1_CORE_RATE)),
    **_HOST_DEFAULTS,
    sources=(
        *_COMMON_SOURCES,
        *_HOST_SOURCES,
        (
            "compute_cores",
            "4 x 4 compute cores (mlir-aie device model; docs/hardware-facts.md#array-geometry)",
        ),
        (
            "dispatch_s",
            "a kernel() call from Python on Phoenix cost about 0.33 ms (submit, syncs and a "
            "trivial tile kernel included), as the seed's authors measured it "
            "(docs/why.md#what-the-seeds-authors-found-later); a run that finds the device "
            "idle pays it",
        ),
        (
            "queued_dispatch_s",
            "derived: xrt-smi validate's throughput test on Phoenix ran 6.3k runs/s, about "
            "159 us a run with runs in flight, the same as its single-run latency (amd/IRON "
            "issue 55; docs/hardware-facts.md#performance-anchors)",
        ),
        (
            "dma_bytes_per_s",
            "derived: the npu2 fit scaled by shim columns 4/8 (assumption: no Phoenix figure)",
        ),
        (
            "core_ops_per_s[gemm_i8_i32]",
            "derived: the npu2 fit per core times the per-core peak ratio (10/16)/(50/32) "
            "(docs/hardware-facts.md#peak-and-measured-throughput); assumption: same fraction "
            "of peak as npu2",
        ),
        (
            "core_ops_per_s[tile16_legacy]",
            "assumption: no public figure; same as gemm_i8_i32, negligible beside dispatch",
        ),
    ),
)

NPU2 = dataclasses.replace(
    NPU1,
    name="npu2",
    generation="npu2",
    description="Strix / Krackan NPU (XDNA2, 8x4 AIE-ML); all device times MODELLED",
    compute_cores=_NPU2_CORES,
    dispatch_s=_NPU2_DISPATCH_S,
    queued_dispatch_s=_NPU2_QUEUED_DISPATCH_S,
    dma_bytes_per_s=_NPU2_DMA,
    core_ops_per_s=(("gemm_i8_i32", _NPU2_CORE_RATE), ("tile16_legacy", _NPU2_CORE_RATE)),
    sources=(
        *_COMMON_SOURCES,
        *_HOST_SOURCES,
        (
            "compute_cores",
            "8 x 4 compute cores (mlir-aie device model; docs/hardware-facts.md#array-geometry)",
        ),
        (
            "dispatch_s",
            "45-80 us for an empty kernel on Strix/Krackan in public reports, upper end "
            "(mlir-aie issue 2381; docs/hardware-facts.md#setup-and-dispatch-costs)",
        ),
        (
            "queued_dispatch_s",
            "derived: xrt-smi validate's throughput test on Strix Halo ran 78,771 runs/s, "
            "about 12.7 us a run with runs in flight (Xilinx/XRT PRs 8075 and 8319; "
            "docs/hardware-facts.md#performance-anchors)",
        ),
        ("dma_bytes_per_s", _NPU2_FIT),
        ("core_ops_per_s[gemm_i8_i32]", _NPU2_FIT + ", divided by 32 cores"),
        (
            "core_ops_per_s[tile16_legacy]",
            "assumption: no public figure; same as gemm_i8_i32, negligible beside dispatch",
        ),
    ),
)

#: The emulator's defaults when calibration is off (NPU_PIPELINE_CALIBRATION=off).
CPU_DEFAULTS = {
    "queued_dispatch_s": 30e-6,
    "pack_bytes_per_s": 2e9,
    "accumulate_bytes_per_s": 2e9,
    "exact_ops_per_s": 20e9,
}

CPU = dataclasses.replace(
    NPU1,
    name="cpu",
    description="the emulated NPU on this host (npu1 geometry, CPU speeds)",
    # The emulator computes a whole block with float32 BLAS, not core by core.
    compute_cores=1,
    # Emulated BOs are ordinary memory, not pinned: no RLIMIT_MEMLOCK applies.
    memory_budget_bytes=64 * 1024 * 1024,
    dispatch_s=100e-6,
    queued_dispatch_s=CPU_DEFAULTS["queued_dispatch_s"],
    dma_bytes_per_s=10e9,
    core_ops_per_s=(
        ("gemm_i8_i32", CPU_DEFAULTS["exact_ops_per_s"]),
        ("tile16_legacy", CPU_DEFAULTS["exact_ops_per_s"]),
    ),
    pack_bytes_per_s=CPU_DEFAULTS["pack_bytes_per_s"],
    accumulate_bytes_per_s=CPU_DEFAULTS["accumulate_bytes_per_s"],
    # The host path and the emulated device compute with the same BLAS.
    host_ops_per_s=CPU_DEFAULTS["exact_ops_per_s"],
    sources=(
        *_COMMON_SOURCES,
        ("host_call_s", dict(_HOST_PRODUCT_SOURCES)["host_call_s"]),
        ("compute_cores", "design: the emulator computes a whole block at once (BLAS)"),
        ("memory_budget_bytes", "design: emulated BOs are ordinary (unpinned) host memory"),
        ("dispatch_s", "assumption: emulator submit -> worker thread -> completion"),
        (
            "queued_dispatch_s",
            "default (calibration off): assumption, the emulator's device thread between runs",
        ),
        ("dma_bytes_per_s", "assumption: host memcpy into and out of emulated BOs"),
        ("pack_bytes_per_s", "default (calibration off): assumption, shared host core"),
        ("accumulate_bytes_per_s", "default (calibration off): assumption, shared host core"),
        ("core_ops_per_s[gemm_i8_i32]", "default (calibration off): float32 BLAS, assumption"),
        ("core_ops_per_s[tile16_legacy]", "default (calibration off): float32 BLAS, assumption"),
        ("host_ops_per_s", "default (calibration off): float32 BLAS, assumption"),
        ("batch_overhead_s", _HANDOFF_SOURCE),
        ("seed_call_host_s", _SEED_HOST_SOURCE),
    ),
)

PROFILES = {p.name: p for p in (NPU1, NPU2, CPU)}

_SLOWED_NAME = re.compile(r"^(?P<base>\w+) slowed x(?P<factor>[0-9.eE+-]+)$")


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """The profile called ``name`` (``"npu1"``, ``"npu2"``, ``"cpu"``,
    or ``"<one of those> slowed x<factor>"``); a :class:`DeviceProfile` is returned as is.

    ``"cpu"`` is calibrated on this host on first use and cached on disk
    (:func:`npu_pipeline.calibration.calibrated_cpu_profile`) unless
    ``NPU_PIPELINE_CALIBRATION=off``.

    Raises:
        PlanError: no profile has that name.
    """
    if isinstance(name, DeviceProfile):
        return name
    slowed = _SLOWED_NAME.match(str(name))
    if slowed:
        try:
            factor = float(slowed["factor"])
        except ValueError:
            factor = float("nan")  # slowed() explains what a factor must be
        return get_profile(slowed["base"]).slowed(factor)
    if name == "cpu":
        from npu_pipeline.calibration import calibrated_cpu_profile

        return calibrated_cpu_profile()
    if name in PROFILES:
        return PROFILES[name]
    raise PlanError(
        explain(
            f"no device profile {name!r}",
            f"one of {', '.join(PROFILES)} (optionally '<name> slowed x<factor>')",
            "Check the spelling, or pass a DeviceProfile object.",
        )
    )
