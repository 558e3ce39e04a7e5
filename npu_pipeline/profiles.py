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

This module is data only: the profiles, the public figures they are fitted to
(:data:`ANCHORS`) and their JSON form (:meth:`DeviceProfile.to_json`,
:meth:`DeviceProfile.from_json`). It imports no other part of the library but
the contract and the errors, so that anything may import it. Finding a profile
by name or file, and calibrating the ``cpu`` one, is
:func:`npu_pipeline.profile_lookup.get_profile`.

No NPU timing here is measured on hardware by this project: every device time
is *modelled* from public figures (each source names its origin and the section of
``docs/hardware-facts.md`` or ``docs/why.md`` that records it) or is an
assumption, and :meth:`DeviceProfile.parameters` says which for every number.
``docs/cost-model.md`` explains the model.

The device time of one run (:meth:`DeviceProfile.run_seconds`) is

    device_time_scale * (dispatch_s + streamed bytes / dma_bytes_per_s + compute_s)

where the streamed bytes are what the shim DMA moves (on an NPU the
whole-array design streams A once per column pass and B once per row pass)
and ``compute_s`` spreads the block's output core tiles over the compute cores
in rounds. DMA and compute are added, not overlapped: an upper bound, and the
form the npu2 DMA rate was fitted in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from npu_pipeline.contract import KernelContract
from npu_pipeline.errors import PlanError, ProfileError, explain

# ---------------------------------------------------------------------------
# Public figures the model is built from (each cited where it is used; every
# one is listed, with what the model gives back for it, in ANCHORS).

_XRT_SMI = (
    "xrt-smi validate (amd/IRON issue 55; Xilinx/XRT pull requests 7878, 8075, 8318, 8319; "
    "docs/hardware-facts.md#performance-anchors)"
)
_IRON_PAPER = (
    '"Striking the Balance" (arXiv 2512.13282; docs/hardware-facts.md#performance-anchors); '
    "its shapes and output type were not confirmed from the abstract"
)
_OPEN_GEMM = (
    "open-toolchain i8 -> i32 GEMM on Strix Halo (amd/IRON issues 171 and 172; "
    "docs/hardware-facts.md#peak-and-measured-throughput)"
)
_IREE_GEMM = (
    "IREE-AMD-AIE i8 GEMM on Strix (nod-ai/iree-amd-aie issues 1183 and 1198; "
    "docs/hardware-facts.md#performance-anchors)"
)

#: Single-run latency of xrt-smi validate's (near-empty) test kernel, seconds:
#: Phoenix 159.5 us, Strix Halo 52 us.
_NPU1_LATENCY_S, _NPU2_LATENCY_S = 159.5e-6, 52e-6
#: xrt-smi validate's throughput with runs kept in flight, runs per second:
#: Phoenix about 6.3k, Strix Halo 78,771 (about 12.7 us a run).
_NPU1_RUNS_PER_S, _NPU2_RUNS_PER_S = 6.3e3, 78_771.0
#: IRON int8 GEMM throughput, ops/s: XDNA (npu1) 6.76 TOPS, XDNA2 (npu2) 38.05 TOPS.
_NPU1_IRON_OPS, _NPU2_IRON_OPS = 6.76e12, 38.05e12
#: Compute cores and shim-DMA columns used by the designs
#: (docs/hardware-facts.md#array-geometry).
_NPU1_CORES, _NPU2_CORES = 16, 32
_NPU1_COLUMNS, _NPU2_COLUMNS = 4, 8
#: Output rows x columns one pass of the npu2 array covers in the whole-array
#: design: 4 rows and 8 columns of 64x64 core tiles (kernels/gemm_i8_i32/design.py;
#: the contract's npu2 ``block_granularity``).
_NPU2_PASS = (256, 512)
#: The seed's measured cost of one per-tile call, all host work included
#: (docs/why.md#the-seeds-measurements).
_SEED_CALL_S = 0.46e-3
#: Default RLIMIT_MEMLOCK on Linux >= 5.16 (8 MiB; this host: ``ulimit -l`` = 8192 KB).
_TYPICAL_MEMLOCK = 8 * 1024 * 1024

#: How far (relative) the model may miss a public figure it is fitted to: the
#: three npu2 whole-run figures cannot all be met by one DMA rate, see
#: docs/cost-model.md#what-the-model-gives-back.
ANCHOR_BAND = 0.15


def _ops(block: tuple[int, int, int]) -> int:
    m, k, n = block
    return 2 * m * k * n


@dataclass(frozen=True)
class Anchor:
    """A public figure a shipped profile is fitted to, and how the model gives it back.

    Attributes:
        profile: the shipped profile it belongs to (``"npu1"`` or ``"npu2"``).
        figure: what was measured, for people.
        kind: how the model gives it back: ``"peak"`` (the array's compute
            rate, ops/s), ``"run"`` (ops/s of one lone run of ``block``),
            ``"latency"`` (seconds of a lone empty run), ``"queued"`` (seconds
            of an empty run queued behind another).
        value: the public figure, in ops/s (``peak``, ``run``) or seconds.
        source: where it was published, and the docs section that records it.
        block: the (m, k, n) of a ``run`` anchor, else ``None``.
    """

    profile: str
    figure: str
    kind: str
    value: float
    source: str
    block: tuple[int, int, int] | None = None

    def modelled(self, profile: DeviceProfile, contract: KernelContract) -> float:
        """What ``profile`` predicts for this figure (same unit as ``value``), with
        ``contract`` (``gemm_i8_i32``) as the kernel."""
        if self.kind == "peak":
            return profile.compute_cores * profile.core_rate(contract)
        if self.kind == "run":
            return _ops(self.block) / profile.run_seconds(contract, self.block)
        if self.kind == "latency":
            return profile.device_time_scale * profile.dispatch_s
        return profile.device_time_scale * profile.queued_dispatch_s


#: Every public figure the npu1 and npu2 profiles are fitted to. The three
#: npu2 ``run`` figures fix the npu2 DMA rate (:func:`_fit_npu2_dma`); the
#: others are taken as they are.
ANCHORS = (
    Anchor("npu1", "IRON int8 GEMM, whole array", "peak", _NPU1_IRON_OPS, _IRON_PAPER),
    Anchor("npu1", "xrt-smi single-run latency, Phoenix", "latency", _NPU1_LATENCY_S, _XRT_SMI),
    Anchor("npu1", "xrt-smi runs in flight, Phoenix", "queued", 1 / _NPU1_RUNS_PER_S, _XRT_SMI),
    Anchor("npu2", "IRON int8 GEMM, whole array", "peak", _NPU2_IRON_OPS, _IRON_PAPER),
    Anchor("npu2", "xrt-smi single-run latency, Strix Halo", "latency", _NPU2_LATENCY_S, _XRT_SMI),
    Anchor("npu2", "xrt-smi runs in flight, Strix Halo", "queued", 1 / _NPU2_RUNS_PER_S, _XRT_SMI),
    Anchor("npu2", "i8 GEMM 1024x512x1024: 3.2 TOPS", "run", 3.2e12, _OPEN_GEMM, (1024, 512, 1024)),
    Anchor(
        "npu2",
        "i8 GEMM 2048^3: 7-8.2 TOPS (midpoint 7.6)",
        "run",
        7.6e12,
        _OPEN_GEMM,
        (2048, 2048, 2048),
    ),
    Anchor(
        "npu2",
        "i8 GEMM 512x4096x512: 365 us",
        "run",
        _ops((512, 4096, 512)) / 365e-6,
        _IREE_GEMM,
        (512, 4096, 512),
    ),
)


def _fit_npu2_dma() -> float:
    """The DMA bytes/s with which lone npu2 runs best reproduce the ``run`` anchors.

    Each anchor's time is ``t = dispatch + bytes / bw + ops / rate`` with the
    xrt-smi latency as dispatch, the IRON figure as the array's rate, and the
    whole-array design's streamed bytes (i8 A once per column pass, i8 B once
    per row pass, i32 C once). One unknown, ``1 / bw``: the least-squares
    solution of the relative time errors. A derived fit, not a measurement:
    about 33 GB/s.
    """
    rows, cols = _NPU2_PASS
    num = den = 0.0
    for anchor in ANCHORS:
        if anchor.profile != "npu2" or anchor.kind != "run":
            continue
        m, k, n = anchor.block
        streamed = m * k * -(-n // cols) + k * n * -(-m // rows) + 4 * m * n
        ops = _ops(anchor.block)
        seconds = ops / anchor.value
        rest = seconds - _NPU2_LATENCY_S - ops / _NPU2_IRON_OPS
        num += streamed * rest / seconds**2
        den += (streamed / seconds) ** 2
    return den / num


_NPU2_DMA = _fit_npu2_dma()
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
    "restreams_operands": "1=yes",
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
        dispatch_s: fixed cost of one run that finds the device idle (its
            latency beyond DMA and compute: submit, start, completion), seconds.
        queued_dispatch_s: what a run costs the device beyond its DMA and
            compute when it was submitted while the run before it was still
            executing (its submission overlapped that run), seconds; at most
            ``dispatch_s``. The planner's simulation charges ``dispatch_s`` to
            a batch that finds the device idle and this to one queued behind
            another.
        dma_bytes_per_s: bytes per second the shim DMA moves between host
            memory and the array.
        core_ops_per_s: int8 ops (2 per multiply-add) per second of ONE core
            while it computes, per contract name, as ``(name, rate)`` pairs.
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
        restreams_operands: True on an NPU: a ``block_gemm`` run's DMA streams A
            once per column pass and B once per row pass of the array (the
            whole-array design; a pass covers the contract's
            ``block_granularity`` of output). False: every buffer is moved
            once (the emulator's copies).
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
    restreams_operands: bool = True
    sources: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # One rate per contract and one source per parameter, the last given
        # winning (as core_rate() and source() read them): a profile then
        # equals the one its JSON form describes.
        for name in ("core_ops_per_s", "sources"):
            object.__setattr__(self, name, tuple(dict(getattr(self, name)).items()))

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

    def streamed_bytes(self, contract: KernelContract, block: tuple[int, int, int]) -> int:
        """Bytes the DMA moves for one run of padded ``block`` (m, k, n).

        Every buffer once, except with :attr:`restreams_operands` for a
        ``block_gemm`` contract: the array covers ``block_granularity`` of
        output per pass, and each pass streams the A rows and B columns it needs,
        so A moves once per pass along n and B once per pass along m.
        """
        sizes = contract.run_buffer_bytes(block)
        if not (self.restreams_operands and contract.semantic == "block_gemm"):
            return sum(sizes.values())
        m, _, n = block
        rows, _, cols = contract.target(self.generation).block_granularity
        passes = {"A": -(-n // cols), "B": -(-m // rows)}
        return sum(
            sizes[buffer.name] * passes.get(buffer.operand, 1) for buffer in contract.buffers
        )

    def transfer_seconds(self, contract: KernelContract, block: tuple[int, int, int]) -> float:
        """Unscaled DMA time of one run (:meth:`streamed_bytes`), seconds."""
        return self.streamed_bytes(contract, block) / self.dma_bytes_per_s

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

    # -- files ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: every field, rates and sources as objects keyed by name."""
        data = dataclasses.asdict(self)
        data["core_ops_per_s"] = dict(self.core_ops_per_s)
        data["sources"] = dict(self.sources)
        return data

    def to_json(self) -> str:
        """This profile as a profile file's text (JSON, format :data:`PROFILE_FORMAT`
        version :data:`PROFILE_FORMAT_VERSION`), which :meth:`from_json` reads back equal."""
        header = {"format": PROFILE_FORMAT, "format_version": PROFILE_FORMAT_VERSION}
        return json.dumps({**header, **self.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "the profile JSON") -> DeviceProfile:
        """The profile a profile file's ``text`` describes (:meth:`to_json`'s format).

        Args:
            text: the file's content.
            origin: what to call it in error messages (for example the file's path).

        Raises:
            ProfileError: not JSON, not a profile of a format version this
                library reads, a field missing, unknown or out of range.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ProfileError(
                explain(
                    f"{origin} is not JSON ({error})",
                    "a device profile as DeviceProfile.to_json() writes it",
                    "Fix the syntax at the place named, or write the file again.",
                )
            ) from None
        return cls(**_checked_fields(data, origin))


#: The ``format`` a profile file names, and the version this library writes and reads.
PROFILE_FORMAT = "npu_pipeline.device_profile"
PROFILE_FORMAT_VERSION = 1

_SLOWED = re.compile(r" slowed x[0-9.eE+-]+$")
#: Times that may be zero in a profile file; every other number must be positive.
_MAY_BE_ZERO = frozenset(
    ("dispatch_s", "queued_dispatch_s", "batch_overhead_s", "seed_call_host_s", "host_call_s")
)
_GENERATIONS = ("npu1", "npu2")


def _file_error(origin: str, what: str, expected: str) -> ProfileError:
    return ProfileError(
        explain(
            f"{origin}: {what}",
            expected,
            "Fix the file, or write it again with DeviceProfile.to_json() "
            "(docs/cost-model.md#profile-files).",
        )
    )


def _checked_fields(data: Any, origin: str) -> dict[str, Any]:
    """``DeviceProfile`` keyword arguments from a parsed profile file, each checked."""
    if not isinstance(data, dict):
        raise _file_error(origin, f"the top level is a JSON {type(data).__name__}", "an object")
    if data.get("format") != PROFILE_FORMAT:
        raise _file_error(
            origin, f"'format' is {data.get('format')!r}", f"'format': {PROFILE_FORMAT!r}"
        )
    version = data.get("format_version")
    if type(version) is not int or not 1 <= version <= PROFILE_FORMAT_VERSION:
        newer = type(version) is int and version > PROFILE_FORMAT_VERSION
        raise ProfileError(
            explain(
                f"{origin}: 'format_version' is {version!r}",
                f"a whole number from 1 to {PROFILE_FORMAT_VERSION}",
                "Upgrade npu_pipeline to read it."
                if newer
                else "Write the file again with DeviceProfile.to_json().",
            )
        )
    fields = {f.name: f for f in dataclasses.fields(DeviceProfile)}
    given = {key: value for key, value in data.items() if key not in ("format", "format_version")}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise _file_error(origin, f"unknown field(s) {unknown}", f"only {sorted(fields)}")
    required = [
        name for name, f in fields.items() if f.default is dataclasses.MISSING and name not in given
    ]
    if required:
        raise _file_error(origin, f"missing field(s) {required}", "every field of a DeviceProfile")
    checked = {
        name: _checked(name, fields[name].type, value, origin) for name, value in given.items()
    }
    if checked["queued_dispatch_s"] > checked["dispatch_s"]:
        raise _file_error(
            origin,
            f"queued_dispatch_s {checked['queued_dispatch_s']!r} s is more than dispatch_s "
            f"{checked['dispatch_s']!r} s",
            "a queued run's dispatch at most a lone run's",
        )
    return checked


def _checked(name: str, kind: str, value: Any, origin: str) -> Any:
    """One field of a profile file, converted to its DeviceProfile type and checked."""
    if kind == "str":
        if not isinstance(value, str) or (name != "description" and not value):
            raise _file_error(origin, f"{name!r} is {value!r}", "a non-empty string")
        if name == "generation" and value not in _GENERATIONS:
            raise _file_error(origin, f"'generation' is {value!r}", f"one of {_GENERATIONS}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _file_error(origin, f"{name!r} is {value!r}", "true or false")
        return value
    if kind == "int":
        if type(value) is not int or value < 1:
            raise _file_error(origin, f"{name!r} is {value!r}", "a whole number >= 1")
        return value
    if kind == "float":
        return _number(name, value, origin, name in _MAY_BE_ZERO)
    if not isinstance(value, dict):
        raise _file_error(origin, f"{name!r} is a JSON {type(value).__name__}", "an object")
    if name == "sources":
        bad = [key for key, text in value.items() if not isinstance(text, str)]
        if bad:
            raise _file_error(origin, f"sources of {bad} are not strings", "text for each")
        return tuple(value.items())
    missing = sorted(set(_SEMANTIC_STAND_IN.values()) - set(value))
    if missing:
        raise _file_error(
            origin,
            f"core_ops_per_s has no rate for {missing}",
            "a rate for every shipped contract (custom contracts use their semantic's)",
        )
    return tuple(
        (contract, _number(f"core_ops_per_s[{contract}]", rate, origin, False))
        for contract, rate in value.items()
    )


def _number(name: str, value: Any, origin: str, may_be_zero: bool) -> float:
    """A finite number (positive unless ``may_be_zero``) from a profile file, as a float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not may_be_zero):
        expected = "a finite number >= 0" if may_be_zero else "a finite number > 0"
        raise _file_error(origin, f"{name!r} is {value!r}", f"{expected} ({_unit(name)})")
    return float(value)


def _unit(name: str) -> str:
    return "ops/s" if name.startswith("core_ops_per_s") else _UNITS.get(name, "")


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
    (
        "restreams_operands",
        "design: the whole-array GEMM streams A once per column pass and B once per row pass "
        "(kernels/gemm_i8_i32/design.py, after mlir-aie's whole_array example)",
    ),
)
_SEED_HOST_SOURCE = (
    "derived: the seed authors' measured 0.46 ms per call (docs/why.md#the-seeds-measurements) "
    f"minus npu1's single-run latency, 159.5 us from {_XRT_SMI}: the Python side of a per-call "
    "loop (kernel() arguments, bo.write/read, syncs, widening, adding)"
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
_PEAK_TO_CORE = (
    "while it computes, a core runs at the measured whole-array figure / cores: a tuned "
    "design hides its DMA behind compute, so its peak is the cores' rate"
)
_TILE16_SOURCE = "assumption: no public figure; same as gemm_i8_i32, negligible beside dispatch"
_NPU2_DMA_SOURCE = (
    "derived: least-squares fit (relative error) of lone runs to three public whole-run GEMM "
    f"figures, 3.2 TOPS at 1024x512x1024 and 7-8.2 TOPS at 2048^3 from {_OPEN_GEMM}, 365 us at "
    f"512x4096x512 from {_IREE_GEMM}, with dispatch_s and core_ops_per_s as given; each is "
    f"met within {ANCHOR_BAND:.0%} (docs/cost-model.md#what-the-model-gives-back)"
)

_HOST_DEFAULTS = {
    "pack_bytes_per_s": 4e9,
    "accumulate_bytes_per_s": 4e9,
    "batch_overhead_s": 50e-6,
    "seed_call_host_s": _SEED_CALL_S - _NPU1_LATENCY_S,
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
    dispatch_s=_NPU1_LATENCY_S,
    queued_dispatch_s=1 / _NPU1_RUNS_PER_S,
    dma_bytes_per_s=_NPU1_DMA,
    # The seed's tile kernel has no public rate; at any plausible rate its
    # 8192 ops take < 0.1 us, noise beside the 159.5 us dispatch.
    core_ops_per_s=(
        ("gemm_i8_i32", _NPU1_IRON_OPS / _NPU1_CORES),
        ("tile16_legacy", _NPU1_IRON_OPS / _NPU1_CORES),
    ),
    **_HOST_DEFAULTS,
    sources=(
        *_COMMON_SOURCES,
        *_HOST_SOURCES,
        (
            "compute_cores",
            "4 x 4 compute cores (mlir-aie device model; docs/hardware-facts.md#array-geometry)",
        ),
        ("dispatch_s", f"single-run latency on Phoenix, 159.5 us, from {_XRT_SMI}"),
        (
            "queued_dispatch_s",
            f"derived: about 6.3k runs/s with runs in flight on Phoenix, from {_XRT_SMI}: "
            "1/6300 s a run, no faster than its single-run latency",
        ),
        (
            "dma_bytes_per_s",
            "derived: the npu2 fit scaled by shim columns 4/8 (assumption: no Phoenix "
            "figure that separates DMA from compute)",
        ),
        (
            "core_ops_per_s[gemm_i8_i32]",
            f"derived: 6.76 TOPS on XDNA / 16 cores, from {_IRON_PAPER}; {_PEAK_TO_CORE}",
        ),
        ("core_ops_per_s[tile16_legacy]", _TILE16_SOURCE),
    ),
)

NPU2 = dataclasses.replace(
    NPU1,
    name="npu2",
    generation="npu2",
    description="Strix / Krackan NPU (XDNA2, 8x4 AIE-ML); all device times MODELLED",
    compute_cores=_NPU2_CORES,
    dispatch_s=_NPU2_LATENCY_S,
    queued_dispatch_s=1 / _NPU2_RUNS_PER_S,
    dma_bytes_per_s=_NPU2_DMA,
    core_ops_per_s=(
        ("gemm_i8_i32", _NPU2_IRON_OPS / _NPU2_CORES),
        ("tile16_legacy", _NPU2_IRON_OPS / _NPU2_CORES),
    ),
    sources=(
        *NPU1.sources,
        (
            "compute_cores",
            "8 x 4 compute cores (mlir-aie device model; docs/hardware-facts.md#array-geometry)",
        ),
        ("dispatch_s", f"single-run latency on Strix Halo, 52 us, from {_XRT_SMI}"),
        (
            "queued_dispatch_s",
            f"derived: 78,771 runs/s with runs in flight on Strix Halo, from {_XRT_SMI}: "
            "about 12.7 us a run",
        ),
        ("dma_bytes_per_s", _NPU2_DMA_SOURCE),
        (
            "core_ops_per_s[gemm_i8_i32]",
            f"derived: 38.05 TOPS on XDNA2 / 32 cores, from {_IRON_PAPER}; {_PEAK_TO_CORE}",
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
    restreams_operands=False,
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
        ("restreams_operands", "design: the emulator copies each buffer once"),
        ("pack_bytes_per_s", "default (calibration off): assumption, shared host core"),
        ("accumulate_bytes_per_s", "default (calibration off): assumption, shared host core"),
        (
            "core_ops_per_s[gemm_i8_i32]",
            "default (calibration off): float32 BLAS, assumption",
        ),
        (
            "core_ops_per_s[tile16_legacy]",
            "default (calibration off): float32 BLAS, assumption",
        ),
        ("host_ops_per_s", "default (calibration off): float32 BLAS, assumption"),
        ("batch_overhead_s", _HANDOFF_SOURCE),
        ("seed_call_host_s", _SEED_HOST_SOURCE),
    ),
)

#: The shipped profiles by name (``"cpu"`` uncalibrated: the documented defaults).
PROFILES = {p.name: p for p in (NPU1, NPU2, CPU)}
