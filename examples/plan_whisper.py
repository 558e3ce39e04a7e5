"""Plan every matmul of the Whisper-base encoder and print the predicted (MODELLED) table.

Shapes from docs/hardware-facts.md#whisper-base-encoder-shapes: d_model 512, 8 heads of
64, FFN 2048, 1500 frames, 6 layers. For each matmul the table shows the plan
the planner picks for the gemm_i8_i32 kernel, and what the seed's way (the
16x16 tile kernel, one call at a time from Python) would take for the same
product. Every time is MODELLED from the device profile, not measured.

    python examples/plan_whisper.py                       # npu1 and npu2, default budget
    python examples/plan_whisper.py --profile npu1 --budget 67108864
"""

from __future__ import annotations

import argparse

from npu_pipeline.planner import plan_batches

LAYERS = 6
HEADS = 8

#: (name, M, K, N, matmuls per layer)
MATMULS = (
    ("QKV proj (fused)", 1500, 512, 1536, 1),
    ("out proj", 1500, 512, 512, 1),
    ("FC1", 1500, 512, 2048, 1),
    ("FC2", 1500, 2048, 512, 1),
    ("attn QK^T / head", 1500, 64, 1500, HEADS),
    ("attn AV / head", 1500, 1500, 64, HEADS),
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def report(profile: str, budget: int | None) -> str:
    """The table for one profile, with encoder totals."""
    lines = [
        f"Whisper-base encoder on {profile}: every time MODELLED (docs/cost-model.md), "
        "not measured",
        f"{'matmul':<18}{'M x K x N':>16}{'x/layer':>8}{'block':>16}{'batches':>8}"
        f"{'slots':>6}{'MiB':>7}{'wall ms':>10}{'eta':>6}  {'bound':<11}{'seed way s':>11}",
    ]
    total = seed_total = 0.0
    undefined: dict[str, str] = {}  # matmul -> why its eta is n/a
    for name, m, k, n, count in MATMULS:
        plan = plan_batches(m, k, n, profile=profile, memory_budget=budget)
        seed = plan_batches(m, k, n, kernel="tile16_legacy", profile=profile, memory_budget=budget)
        est = plan.estimate
        block = "x".join(map(str, plan.block))
        if est.overlap_efficiency is None:
            undefined[name] = est.overlap_na_reason or ""
            eta = f"{'n/a*':>6}"
        else:
            eta = f"{est.overlap_efficiency:>6.2f}"
        lines.append(
            f"{name:<18}{f'{m}x{k}x{n}':>16}{count:>8}{block:>16}{len(plan.batches):>8}"
            f"{plan.slots:>6}{plan.memory_bytes / 2**20:>7.2f}{_ms(est.wall_s):>10}"
            f"{eta}  {est.bound:<11}{seed.estimate.sequential_s:>11.1f}"
        )
        total += LAYERS * count * est.wall_s
        seed_total += LAYERS * count * seed.estimate.sequential_s
    lines += [f"* eta n/a for {name}: {reason}" for name, reason in undefined.items()]
    lines.append(
        f"encoder ({LAYERS} layers, matmuls one after another): {total * 1e3:.1f} ms planned "
        f"vs {seed_total:.0f} s the seed's way ({seed_total / total:,.0f}x), MODELLED"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", help="npu1, npu2 or cpu (repeatable)")
    parser.add_argument("--budget", type=int, default=None, help="pinned-memory budget, bytes")
    args = parser.parse_args()
    profiles = args.profile or ["npu1", "npu2"]
    for profile in profiles:
        print(report(profile, args.budget), end="\n\n")
    print("The FC1 plan in detail:\n")
    print(plan_batches(1500, 512, 2048, profile=profiles[0], memory_budget=args.budget).explain())


if __name__ == "__main__":
    main()
