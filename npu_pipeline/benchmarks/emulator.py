"""Benchmark of the emulated NPU: dispatch round trip and exact-compute speed.

Rows (all measured on this host, none modelled):

- the round trip of one run through the emulator's pyxrt API:
  ``kernel(...)`` -> ``wait()`` returns COMPLETED -> ``sync(FROM_DEVICE)`` of
  the output, for the tiny 16x16x16 block of ``tile16_legacy`` (dispatch
  cost) and the smallest legal ``gemm_i8_i32`` block (256x64x256); and the
  tiny one through ``NpuDevice`` (input sync, start, wait in slices, output sync);
- a batch of 24 tile pairs through ``NpuDevice`` (one sync in, the runs, one
  sync out), per run: as one ``runlist`` chain (one command), and with
  runlists off (24 commands, four in flight);
- the exact int8 -> int32 compute of a 512x512x512 block as the device thread
  runs it (int8 -> float32, BLAS, float32 -> int32 into the output), beside a
  bare numpy float32 matmul of the same shape, sampled alternately so both
  see the same machine load; and a whole emulated run of that block.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from npu_pipeline import emulator as xrt
from npu_pipeline.benchmarks import Goal, Row, Section, median_seconds
from npu_pipeline.contract import KernelContract, load_contract
from npu_pipeline.device import NpuDevice
from npu_pipeline.emulator._compute import execute
from npu_pipeline.exact import Scratch

TINY = (16, 16, 16)  # tile16_legacy's one block
SMALL = (256, 64, 256)  # the smallest legal gemm_i8_i32 block on npu1
BIG = (512, 512, 512)
CHAIN = 24  # tile pairs per batch: one full runlist chain
TO = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
FROM = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE


def _round_trip(
    dev: xrt.device, contract: KernelContract, block: tuple[int, int, int]
) -> Callable[[], None]:
    """One run of ``block``, inputs written and synced: call it for one round trip."""
    ctx = xrt.hw_context(dev, dev.register_xclbin(xrt.xclbin(contract)))
    kernel = xrt.kernel(ctx, contract.kernel_name)
    words = xrt.instructions(contract, block)
    instr = xrt.bo(dev, words.nbytes, xrt.bo.cacheable, kernel.group_id(1))
    instr.write(words, 0)
    instr.sync(TO)
    rng = np.random.default_rng(0)
    bos = []
    for name, nbytes in contract.run_buffer_bytes(block).items():
        bo = xrt.bo(dev, nbytes, xrt.bo.host_only, kernel.group_id(contract.arguments.index(name)))
        bo.write(rng.integers(-128, 128, nbytes, dtype=np.int8), 0)
        bo.sync(TO)
        bos.append(bo)

    def round_trip() -> None:
        state = kernel(contract.opcode, instr, len(words), *bos).wait()
        if state != xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise RuntimeError(f"benchmark run ended in {state.name}")
        bos[-1].sync(FROM)

    return round_trip


def _paired(first: Callable[[], object], second: Callable[[], object], repeat: int):
    """Alternate ``first`` and ``second``; return their median seconds and median ratio."""
    a, b = [], []
    for fn in (first, second):
        fn()  # warm up
    for _ in range(repeat):
        for fn, samples in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
    return statistics.median(a), statistics.median(b), ratio


def run(quick: bool = False) -> Section:
    """Measure the emulator; goals: tiny round trip < 150 us, exact compute <= 1.3x bare BLAS."""
    gemm, tile16 = load_contract("gemm_i8_i32"), load_contract("tile16_legacy")
    repeat = 7 if quick else 31
    trips = 200 if quick else 2000
    dev = xrt.device(0)
    try:
        tiny_s = median_seconds(_round_trip(dev, tile16, TINY), repeat=trips, warmup=20)
        small_s = median_seconds(_round_trip(dev, gemm, SMALL), repeat=trips // 4, warmup=5)
        big_s = median_seconds(_round_trip(dev, gemm, BIG), repeat=repeat)
    finally:
        dev.close()

    with NpuDevice.open(tile16, device="emulator") as npu:
        slot = npu.allocate_slot(TINY)
        device_s = median_seconds(lambda: npu.wait(npu.start(slot, TINY)), repeat=trips, warmup=20)
    batch_s = {}
    for runlists in (True, False):
        with NpuDevice.open(tile16, device="emulator", runlists=runlists) as npu:
            pairs = npu.allocate_slot({"in": 512 * CHAIN, "out": 256 * CHAIN})

            def batch(npu: NpuDevice = npu, slot: object = pairs) -> None:
                npu.wait(npu.start(slot, TINY, n_runs=CHAIN))

            # The warm-up measures the pace that sizes the chains.
            batch_s[runlists] = median_seconds(batch, repeat=trips // 8, warmup=3) / CHAIN

    m, k, n = BIG
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    buffers = {
        "a": a.view(np.uint8).ravel(),
        "b": b.view(np.uint8).ravel(),
        "c": np.zeros(4 * m * n, dtype=np.uint8),
    }
    stream = xrt.decode(xrt.instructions(gemm, BIG))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    scratch, product = Scratch(), np.empty((m, n), dtype=np.float32)
    exact_s, bare_s, ratio = _paired(
        lambda: execute(gemm, stream, buffers, scratch),
        lambda: np.matmul(a32, b32, out=product),
        repeat,
    )
    ops = 2 * m * k * n
    note = f"median of {repeat}, sampled alternately"
    rows = [
        Row("emulator round trip, 16x16x16 tile", tiny_s * 1e6, "us", f"median of {trips}"),
        Row("NpuDevice start+wait, 16x16x16 tile", device_s * 1e6, "us", f"median of {trips}"),
        Row(
            f"NpuDevice batch of {CHAIN} tiles, runlist chain, per run",
            batch_s[True] * 1e6,
            "us",
            f"median of {trips // 8}",
        ),
        Row(
            f"NpuDevice batch of {CHAIN} tiles, one command per run, per run",
            batch_s[False] * 1e6,
            "us",
            f"median of {trips // 8}",
        ),
        Row(
            "emulator round trip, 256x64x256 block", small_s * 1e6, "us", f"median of {trips // 4}"
        ),
        Row("emulator round trip, 512^3 block", big_s * 1e3, "ms", f"median of {repeat}"),
        Row("exact int8 compute 512^3", exact_s * 1e3, "ms", note),
        Row("exact int8 compute 512^3", ops / exact_s / 1e9, "GOPS", note),
        Row("bare numpy float32 matmul 512^3", bare_s * 1e3, "ms", note),
        Row("bare numpy float32 matmul 512^3", ops / bare_s / 1e9, "GOPS", note),
        Row("exact / bare time", ratio, "x", "median of paired ratios"),
    ]
    goals = [
        Goal("emulator round trip (16x16x16 tile) < 150 us", tiny_s * 1e6, 150.0, False),
        Goal("exact compute <= 1.3x bare float32 BLAS", ratio, 1.3, False),
    ]
    return Section("Emulated NPU", rows, goals)
