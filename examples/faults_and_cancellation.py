"""Failures stay with their request: a device fault, then a cancelled caller.

1. Fault: the emulated NPU is told (``device_options={"faults": [...]}``) to
   fail run 0 the way firmware does (``ERT_CMD_STATE_ERROR``). Two requests run
   concurrently; the one whose batch owns run 0 gets a ``DeviceError`` naming
   the state, batch and request; the other one is exact.
2. Cancellation: a large request is abandoned after a few milliseconds with
   ``anyio.move_on_after``. When the call returns, its runs have finished and
   its slots are back in the pool (``pipe.slots_in_use == 0``), and the next
   request is exact.

Fault injection exists only on the emulated NPU (docs/emulator.md).

    python examples/faults_and_cancellation.py
    python examples/faults_and_cancellation.py --small
"""

from __future__ import annotations

import argparse
import sys

import anyio
import numpy as np

import npu_pipeline as npp
from npu_pipeline.emulator import Fault, FaultKind


def operands(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    return a, rng.integers(-128, 128, size=(k, n), dtype=np.int8)


def is_exact(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> bool:
    # float64 BLAS is exact for int8 products (partial sums stay far below 2**53).
    return np.array_equal(c, a.astype(np.float64) @ b.astype(np.float64))


async def fault(rng: np.random.Generator, size: int) -> bool:
    print("1. a device fault in one of two concurrent requests")
    victim, bystander = operands(rng, 2 * size, size, 2 * size), operands(rng, size, size, size)
    caught: list[npp.DeviceError] = []
    result: list[np.ndarray] = []

    # Runs are numbered per device in the order they start, so the fault
    # targets a run, not a request: queue the victim first to own run 0.
    options = {"faults": [Fault(FaultKind.ERROR, run_index=0)]}
    async with npp.open_pipeline(device="emulator", device_options=options) as pipe:

        async def call_victim() -> None:
            try:
                await pipe.matmul(*victim)
            except npp.DeviceError as error:
                caught.append(error)

        async def call_bystander() -> None:
            result.append(await pipe.matmul(*bystander))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call_victim)
            while pipe.active_requests == 0:  # until the victim is queued
                await anyio.sleep(0)
            tg.start_soon(call_bystander)
        idle = pipe.slots_in_use == 0 and pipe.active_requests == 0
        planned = len(pipe.plan(2 * size, size, 2 * size).batches)
        timeline = pipe.timeline

    error = caught[0] if caught else None
    if error is not None:
        print(
            f"   victim failed: DeviceError state={error.state} batch={error.batch} "
            f"request={error.request}"
        )
        print(f"   message: {error}")
        ran = timeline.for_request(error.request).summary().batches
        print(f"   victim batches that reached the device: {ran} of {planned}; the rest never ran")
    exact = bool(result) and is_exact(*bystander, result[0])
    print(f"   bystander exact: {exact}; pipeline idle afterwards: {idle}")
    return error is not None and error.state == "ERT_CMD_STATE_ERROR" and exact and idle


async def cancel(rng: np.random.Generator, large: tuple[int, int, int], after_s: float) -> bool:
    print(f"2. cancelling a {'x'.join(map(str, large))} request after {after_s * 1e3:g} ms")
    big = operands(rng, *large)
    after = operands(rng, 300, 200, 100)
    async with npp.open_pipeline() as pipe:
        with anyio.move_on_after(after_s) as scope:
            await pipe.matmul(*big)
        ran = {s.batch for s in pipe.timeline.spans if s.stage == "execute"}
        total = len(pipe.plan(*large).batches)
        print(
            f"   cancelled: {scope.cancelled_caught}; batches that reached the device: "
            f"{len(ran)} of {total}"
        )
        print(f"   slots in use: {pipe.slots_in_use}, active requests: {pipe.active_requests}")
        idle = pipe.slots_in_use == 0 and pipe.active_requests == 0
        exact = is_exact(*after, await pipe.matmul(*after))
    print(f"   next request exact: {exact}")
    if not scope.cancelled_caught:
        print("   (the request finished before the deadline: try a larger shape)")
    return idle and exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smaller matrices (fast)")
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    size, large = (512, (1500, 2048, 2048)) if args.small else (1024, (3000, 2048, 2048))
    ok = anyio.run(fault, rng, size) and anyio.run(cancel, rng, large, 0.01)
    print(f"all checks passed: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
