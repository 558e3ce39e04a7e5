"""A host program written only against pyxrt's documented API, in the mlir-aie test.py flow.

It runs one int8 GEMM block (contract ``gemm_i8_i32``) and one 16x16 tile
pair (``tile16_legacy``) and checks both bit-exactly against the golden model.

With XRT installed it drives the NPU; give it the kernel build folders (each
holding the xclbin and the insts file the contract names, as ``make`` writes
them into ``kernels/<name>/build/<generation>/``)::

    python examples/pyxrt_host_program.py --gemm-build kernels/gemm_i8_i32/build/npu1 \
        --tile16-build path/to/tile16/build

Without pyxrt it runs unchanged on the emulated NPU (``npu_pipeline.emulator``),
after writing emulated build folders (an emulated xclbin and the insts files)
to a temporary directory; that preparation is the only emulator-specific code.
The real-XRT path has not been run on hardware by this project.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import pyxrt

    EMULATED = False
except ImportError:
    from npu_pipeline import emulator as pyxrt

    EMULATED = True

from npu_pipeline import reference
from npu_pipeline.contract import load_contract

GEMM_BLOCK = (256, 128, 256)  # on the npu1 block grid of gemm_i8_i32
TILE_BLOCK = (16, 16, 16)
OPCODE = 3


def run_kernel(
    xrt, build: Path, contract_name: str, block, inputs: list[np.ndarray], out_bytes: int
) -> np.ndarray:
    """One run: inputs in groups 3, 4, ... and the output in the next group; output bytes."""
    contract = load_contract(contract_name)
    instr_v = np.fromfile(build / contract.instruction_file(block), dtype=np.uint32)

    device = xrt.device(0)
    xclbin = xrt.xclbin(str(build / contract.xclbin))
    xkernel = next(k for k in xclbin.get_kernels() if "MLIR_AIE" in k.get_name())
    device.register_xclbin(xclbin)
    context = xrt.hw_context(device, xclbin.get_uuid())
    kernel = xrt.kernel(context, xkernel.get_name())

    bo_instr = xrt.bo(device, instr_v.nbytes, xrt.bo.cacheable, kernel.group_id(1))
    bo_inputs = [
        xrt.bo(device, data.nbytes, xrt.bo.host_only, kernel.group_id(3 + i))
        for i, data in enumerate(inputs)
    ]
    bo_out = xrt.bo(device, out_bytes, xrt.bo.host_only, kernel.group_id(3 + len(inputs)))

    bo_instr.write(instr_v, 0)
    bo_instr.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)
    for bo, data in zip(bo_inputs, inputs, strict=True):
        bo.write(data, 0)
        bo.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE)

    # n_insts in the unit the build's contract names (words: len(instr_v)).
    run = kernel(OPCODE, bo_instr, contract.instruction_count(instr_v.nbytes), *bo_inputs, bo_out)
    state = run.wait()
    if state != xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
        raise RuntimeError(f"{contract_name}: kernel ended in {state}")
    bo_out.sync(xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE)
    return bo_out.read(out_bytes, 0)


def write_emulated_build(folder: Path, contract_name: str, block) -> Path:
    """Emulator only: a build folder with an emulated xclbin and insts file."""
    return pyxrt.write_build(load_contract(contract_name), folder, "npu1", [block])


def main(argv: list[str] | None = None) -> int:
    """Run both kernels, compare with the golden model; 0 when both are bit-exact."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemm-build", type=Path, help="gemm_i8_i32 build folder (real XRT)")
    parser.add_argument("--tile16-build", type=Path, help="tile16_legacy build folder (real XRT)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(7)
    m, k, n = GEMM_BLOCK
    a = rng.integers(-128, 128, size=(m, k), dtype=np.int8)
    b = rng.integers(-128, 128, size=(k, n), dtype=np.int8)
    ta = rng.integers(-128, 128, size=(16, 16), dtype=np.int8)
    tb = rng.integers(-128, 128, size=(16, 16), dtype=np.int8)
    with tempfile.TemporaryDirectory() as tmp:
        gemm_build, tile_build = args.gemm_build, args.tile16_build
        if EMULATED:
            gemm_build = write_emulated_build(Path(tmp) / "gemm", "gemm_i8_i32", GEMM_BLOCK)
            tile_build = write_emulated_build(Path(tmp) / "tile16", "tile16_legacy", TILE_BLOCK)
        elif gemm_build is None or tile_build is None:
            parser.error("with real XRT, pass --gemm-build and --tile16-build")
        c = run_kernel(pyxrt, gemm_build, "gemm_i8_i32", GEMM_BLOCK, [a, b], m * n * 4)
        t = run_kernel(
            pyxrt,
            tile_build,
            "tile16_legacy",
            TILE_BLOCK,
            [np.concatenate([ta.ravel(), tb.ravel()])],
            256,
        )
    gemm_ok = np.array_equal(c.view(np.int32).reshape(m, n), reference.matmul_exact(a, b))
    tile_ok = np.array_equal(t.view(np.int8).reshape(16, 16), reference.tile16_kernel(ta, tb))
    backend = "emulated NPU" if EMULATED else "NPU via pyxrt"
    print(f"{backend}: gemm_i8_i32 {m}x{k}x{n} bit-exact: {gemm_ok}")
    print(f"{backend}: tile16_legacy 16x16x16 bit-exact: {tile_ok}")
    return 0 if gemm_ok and tile_ok else 1


if __name__ == "__main__":
    sys.exit(main())
