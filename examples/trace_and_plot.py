"""See where the time goes: a Perfetto trace, a Gantt chart, and prediction vs measurement.

Runs one matmul (Whisper's FC1 shape by default), checks it exactly, then
writes what the pipeline recorded:

- a Chrome trace-event JSON file: open it at https://ui.perfetto.dev (Open
  trace file) or chrome://tracing; one track per stage and slot;
- a Gantt chart PNG, if matplotlib is installed (``pip install "npu-pipeline[plot]"``);

and prints the planner's predicted stage times beside the measured ones.
Measured times come from the emulated NPU (this machine's CPU), not an NPU;
the prediction is the ``cpu`` profile's model of that same emulator.
docs/timeline.md explains how to read all three.

    python examples/trace_and_plot.py                       # files in a new temp dir
    python examples/trace_and_plot.py --trace t.json --plot g.png
    python examples/trace_and_plot.py --small
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import anyio
import numpy as np

import npu_pipeline as npp


async def run(m: int, k: int, n: int, trace: Path, gantt: Path) -> bool:
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    async with npp.open_pipeline() as pipe:
        plan = pipe.plan(m, k, n)
        print(plan.explain(max_batches=3), end="\n\n")
        # The first call pays one-off costs (allocating BOs, warming BLAS):
        # trace only the second, through a window that collects its spans.
        await pipe.matmul(a, b)
        with pipe.timeline.window() as timeline:
            c = await pipe.matmul(a, b)

    # float64 BLAS is exact for int8 products (partial sums stay far below 2**53).
    exact = np.array_equal(c, a.astype(np.float64) @ b.astype(np.float64))
    print(timeline.report(), end="\n\n")
    estimate = plan.estimate
    comparison = timeline.compare_with_prediction(
        estimate.wall_s, estimate.busy_s, len(plan.batches)
    )
    print(comparison.format())
    print("Measured on the emulated NPU (this CPU), not on an NPU.\n")

    print(f"trace: {timeline.to_chrome_trace(trace)}  (open in https://ui.perfetto.dev)")
    if importlib.util.find_spec("matplotlib") is not None:
        print(f"Gantt chart: {timeline.plot(gantt)}")
    else:
        print('Gantt chart skipped: matplotlib is not installed (pip install "npu-pipeline[plot]")')
    print(f"exact: {exact}")
    return exact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 1024x256x2048 matmul (fast)")
    parser.add_argument("--trace", type=Path, default=None, help="trace JSON path")
    parser.add_argument("--plot", type=Path, default=None, help="Gantt chart PNG path")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="npu_pipeline_trace_"))
    trace = args.trace or folder / "trace.json"
    gantt = args.plot or folder / "gantt.png"
    shape = (1024, 256, 2048) if args.small else (1500, 512, 2048)
    return 0 if anyio.run(run, *shape, trace, gantt) else 1


if __name__ == "__main__":
    sys.exit(main())
