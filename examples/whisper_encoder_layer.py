"""The matmuls of one Whisper-base encoder layer, quantised to int8, through one pipeline.

Shapes from docs/hardware-facts.md#whisper-base-encoder-shapes: d_model 512, 8 heads of 64,
FFN 2048, 1500 frames.
Float32 activations and weights are quantised with ``quantize_symmetric``
(activations one scale per tensor, weights one scale per output column), every
matmul runs on the device from its own task, all at once, and each int32
result is checked twice: exactly against the int8 product, and after
``dequantize_matmul`` against the float32 product (relative error).

A real layer chains these (the attention scores need Q and K from the QKV
projection, FC2 needs FC1's output). Here each matmul gets its own random
input so all can be in flight together, as they are when a server runs many
audio streams through one NPU.

Times come from the emulated NPU, which computes on this machine's CPU: they
show the pipeline's overlap, not NPU speed.

    python examples/whisper_encoder_layer.py                 # full size, 8 attention heads
    python examples/whisper_encoder_layer.py --small         # 150 frames, 2 heads
    python examples/whisper_encoder_layer.py --no-attention  # the four projections only
"""

from __future__ import annotations

import argparse
import sys

import anyio
import numpy as np

import npu_pipeline as npp

D_MODEL, HEAD_DIM, FFN = 512, 64, 2048


def layer_matmuls(frames: int, heads: int) -> list[tuple[str, int, int, int]]:
    """(name, M, K, N) of every matmul in one encoder layer."""
    shapes = [
        ("QKV proj (fused)", frames, D_MODEL, 3 * D_MODEL),
        ("out proj", frames, D_MODEL, D_MODEL),
        ("FC1", frames, D_MODEL, FFN),
        ("FC2", frames, FFN, D_MODEL),
    ]
    shapes += [(f"QK^T head {h}", frames, HEAD_DIM, frames) for h in range(heads)]
    return shapes


async def run_layer(frames: int, heads: int) -> bool:
    rng = np.random.default_rng(0)
    shapes = layer_matmuls(frames, heads)
    layers = {}
    for name, m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        # Weight columns of very different size are why per-column scales pay off.
        w = rng.standard_normal((k, n), dtype=np.float32) * rng.uniform(0.05, 1.0, n)
        w = w.astype(np.float32)
        layers[name] = (a, w, npp.quantize_symmetric(a), npp.quantize_symmetric(w, axis=1))
    results: dict[str, np.ndarray] = {}

    async with npp.open_pipeline() as pipe:
        print(f"device: {pipe.device_info.name} (timing: {pipe.device_info.timing})")

        async def one(name: str) -> None:
            _, _, qa, qw = layers[name]
            results[name] = await pipe.matmul(qa.values, qw.values)

        async with anyio.create_task_group() as tg:
            for name in layers:
                tg.start_soon(one, name)
        report = pipe.timeline.report()

    all_ok = True
    print(f"\n{'matmul':<18}{'M x K x N':>18}  exact  rel. error vs float32")
    for name, m, k, n in shapes:
        a, w, qa, qw = layers[name]
        # float64 BLAS is exact here: every partial sum is an integer below 2**53.
        exact = qa.values.astype(np.float64) @ qw.values.astype(np.float64)
        ok = np.array_equal(results[name], exact)
        y = npp.dequantize_matmul(results[name], qa.scale, qw.scale)
        ref = a @ w
        rel = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
        all_ok &= ok and rel < 0.05  # int8 with these scales lands near 1 %
        print(f"{name:<18}{f'{m}x{k}x{n}':>18}  {ok!s:<5}  {rel:.2%}")

    print(f"\n{report}")
    print("Times above were measured on the emulated NPU (this CPU), not on an NPU.")
    print(f"exact: {all_ok}")
    return all_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="150 frames and 2 heads (fast)")
    parser.add_argument("--no-attention", action="store_true", help="skip the QK^T matmuls")
    args = parser.parse_args()
    frames, heads = (150, 2) if args.small else (1500, 8)
    ok = anyio.run(run_layer, frames, 0 if args.no_attention else heads)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
