"""The ``npu-pipeline`` command: plan | run | bench | demo.

Every sub-command runs on the emulated NPU unless ``--device xrt`` is given,
and every figure the emulator's timing model produces is labelled *modelled*.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

#: ``npu-pipeline bench <section>``: module under npu_pipeline.benchmarks with ``run(quick)``.
BENCH_SECTIONS = ("packing", "emulator", "pipeline")


def _cmd_plan(args: argparse.Namespace) -> int:
    from npu_pipeline.planner import plan_batches

    plan = plan_batches(
        args.M,
        args.K,
        args.N,
        kernel=args.kernel,
        profile=args.profile,
        slots=args.slots,
        memory_budget=args.budget,
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(plan.explain())
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    sections = BENCH_SECTIONS if args.section == "all" else (args.section,)
    results = []
    for name in sections:
        module = importlib.import_module(f"npu_pipeline.benchmarks.{name}")
        section = module.run(quick=args.quick)
        print(section.format(), end="\n\n", flush=True)
        results.append(section.to_dict())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from npu_pipeline.demo import main as demo_main

    return demo_main(args)


def _add_shape(parser: argparse.ArgumentParser) -> None:
    for name in ("M", "K", "N"):
        parser.add_argument(name, type=int, help=f"matrix dimension {name} (>= 1)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``npu-pipeline`` (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="npu-pipeline",
        description="Pipelined INT8 matmul for AMD Ryzen AI NPUs (emulated by default).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="dry-run the planner and print the batch plan")
    _add_shape(plan)
    plan.add_argument("--kernel", default="gemm_i8_i32", help="kernel contract name or path")
    plan.add_argument("--profile", default="npu1", help="device profile: npu1, npu2, cpu")
    plan.add_argument("--slots", type=int, default=None, help="BO slots (1..4); default: best")
    plan.add_argument("--budget", type=int, default=None, help="pinned-memory budget, bytes")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_plan)

    bench = sub.add_parser("bench", help="run benchmarks, print a table, optionally write JSON")
    bench.add_argument("section", nargs="?", default="all", choices=("all", *BENCH_SECTIONS))
    bench.add_argument("--json", default=None, help="write the results to this JSON file")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes")
    bench.set_defaults(func=_cmd_bench)

    demo = sub.add_parser("demo", help="plan, run and verify a Whisper-shaped matmul")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``npu-pipeline`` console script."""
    from npu_pipeline.errors import NpuPipelineError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NpuPipelineError as error:
        print(f"npu-pipeline: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
