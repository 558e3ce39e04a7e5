"""Kernel builds: where the files are, their instruction headers, the n_insts unit, and
the known-answer run every NpuDevice.open makes.

The real-XRT path is driven on the emulator module (``device="xrt",
xrt_module=emulator``) over emulated build folders, so the file lookup and the
header checks run as they would on a Ryzen AI machine.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import exact, random_int8
from test_device import no_leaks  # noqa: F401 (autouse: a refused open leaks nothing either)

from npu_pipeline import emulator, insts, reference
from npu_pipeline.contract import load_contract, parse_contract
from npu_pipeline.device import NpuDevice, known_answer
from npu_pipeline.device.builds import BUILD_DIR_ENV
from npu_pipeline.emulator import Fault, FaultKind
from npu_pipeline.emulator._instructions import WORDS, MalformedInstructions
from npu_pipeline.errors import ContractError, DeviceError, DriverRuleError

GEMM = load_contract("gemm_i8_i32")
# The sources beside the contract: in a checkout, not in an installed wheel
# (.ci/run installs non-editable; the wheel carries kernel.json only).
CHECKOUT = load_contract(Path(__file__).resolve().parents[1] / "kernels/gemm_i8_i32/kernel.json")
TILE16 = load_contract("tile16_legacy")
KNOWN = (256, 64, 256)  # the smallest legal gemm_i8_i32 block on npu1: the known answer's
BLOCK = (256, 128, 256)  # the block of examples/pyxrt_host_program.py
TO = emulator.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
FROM = emulator.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
S = emulator.ert_cmd_state


@pytest.fixture(autouse=True)
def no_build_dir_env(monkeypatch):
    """Tests set the override themselves; a developer's own must not leak in."""
    monkeypatch.delenv(BUILD_DIR_ENV, raising=False)


def kernel_folder(tmp_path: Path, contract=GEMM) -> Path:
    """A copy of the contract's kernel folder (kernel.json only) in ``tmp_path``."""
    folder = tmp_path / contract.name
    folder.mkdir()
    shutil.copy(contract.source, folder / "kernel.json")
    return folder


def gemm_block(npu: NpuDevice, rng, block) -> None:
    """One run of ``block`` with random operands, compared with the int64 product."""
    m, k, n = block
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    slot = npu.allocate_slot(block)
    try:
        slot.view("a")[: a.size] = a.ravel()
        slot.view("b")[: b.size] = b.ravel()
        npu.wait(npu.start(slot, block))
        np.testing.assert_array_equal(
            slot.view("c")[: m * n].reshape(m, n), exact(a, b).astype(np.int32)
        )
    finally:
        npu.free_slot(slot)


def open_xrt(contract, **options) -> NpuDevice:
    return NpuDevice.open(contract, device="xrt", xrt_module=emulator, **options)


# -- the layout -------------------------------------------------------------------


def test_the_makefile_writes_where_the_device_layer_looks():
    """One layout: make's default outputs are the contract's build folder, and its
    default shapes hold the known-answer block and the example's block."""
    for generation, known, example in [
        ("npu1", (256, 64, 256), (256, 128, 256)),
        ("npu2", (256, 64, 512), (256, 128, 512)),
    ]:
        dry_run = subprocess.run(
            ["make", "-n", "-C", str(Path(CHECKOUT.source).parent), f"GEN={generation}",
             "PEANO_INSTALL_DIR=/nowhere", "all"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        folder = CHECKOUT.build_folder(generation)
        assert known == known_answer.block_of(GEMM, generation)
        for block in (known, example):
            assert f"--npu-insts-name={GEMM.instruction_file(block)}" in dry_run
        assert f"cd {folder} && aiecc" in dry_run
        assert f"--xclbin-name={GEMM.xclbin}" in dry_run


def test_default_layout_option_and_environment(tmp_path, monkeypatch, rng):
    """build_dir option, then $NPU_PIPELINE_BUILD_DIR, then build/<generation>/ beside
    kernel.json; every matmul exact."""
    folder = kernel_folder(tmp_path)
    contract = load_contract(folder / "kernel.json")
    default = emulator.write_build(contract, folder / "build" / "npu1", "npu1", [KNOWN, BLOCK])
    with open_xrt(contract) as npu:
        assert npu.build.folder == default and "build_dir" in npu.build.origin
        gemm_block(npu, rng, BLOCK)

    elsewhere = emulator.write_build(contract, tmp_path / "env", "npu1", [KNOWN])
    monkeypatch.setenv(BUILD_DIR_ENV, str(elsewhere))
    with open_xrt(contract) as npu:
        assert npu.build.folder == elsewhere and BUILD_DIR_ENV in npu.build.origin
        with pytest.raises(ContractError, match=r"insts_256x128x256\.bin does not exist"):
            gemm_block(npu, rng, BLOCK)  # only the env folder is used: no fallback

    chosen = emulator.write_build(contract, tmp_path / "option", "npu1", [KNOWN, BLOCK])
    with open_xrt(contract, build_dir=chosen) as npu:
        assert npu.build.folder == chosen and npu.build.origin == "the build_dir option"
        gemm_block(npu, rng, BLOCK)


@pytest.mark.anyio
async def test_build_dir_reaches_the_device_through_open_pipeline(tmp_path, rng):
    """The user's path: open_pipeline(device_options={"build_dir": ...}) on real XRT."""
    import npu_pipeline

    folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN])
    options = {"xrt_module": emulator, "build_dir": str(folder)}
    async with npu_pipeline.open_pipeline(
        device="xrt", profile="npu1", host_path=False, device_options=options
    ) as pipe:
        a, b = random_int8(rng, KNOWN[:2]), random_int8(rng, KNOWN[1:])
        np.testing.assert_array_equal(await pipe.matmul(a, b), exact(a, b))


def test_contract_build_dir_field_is_validated():
    raw = json.loads(Path(GEMM.source).read_text())
    assert parse_contract(raw).build_dir == "build/{generation}"
    raw.pop("build_dir")
    assert parse_contract(raw).build_dir == "build/{generation}"  # the default
    for bad in ["/abs/{generation}", "build/{gen}", "", 3]:
        raw["build_dir"] = bad
        with pytest.raises(ContractError, match="build_dir"):
            parse_contract(raw)


@pytest.mark.parametrize("missing", ["xclbin", "known", "block"])
def test_a_missing_build_file_names_itself_and_its_make_command(tmp_path, rng, missing):
    folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN, BLOCK])
    name = {"xclbin": GEMM.xclbin, "known": "insts_256x64x256.bin"}.get(missing)
    if name:
        (folder / name).unlink()
        with pytest.raises(ContractError) as info:
            open_xrt(GEMM, build_dir=folder)
    else:
        with open_xrt(GEMM, build_dir=folder) as npu, pytest.raises(ContractError) as info:
            gemm_block(npu, rng, (512, 64, 256))
        name = "insts_512x64x256.bin"
    message = str(info.value)
    assert f"{folder / name} does not exist" in message
    kernel_dir = Path(GEMM.source).parent
    if not (kernel_dir / "Makefile").is_file():  # an installed package: the checkout's folder
        kernel_dir = "kernels/gemm_i8_i32"
    target = {
        "xclbin": "",
        "known": ' SHAPES="256x64x256" insts',
        "block": ' SHAPES="512x64x256" insts',
    }[missing]
    assert f"make -C {kernel_dir} GEN=npu1{target}`" in message
    assert "build_dir" in message and BUILD_DIR_ENV in message


def test_a_real_xclbin_is_refused_by_the_emulator(tmp_path):
    folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN])
    (folder / GEMM.xclbin).write_bytes(b"xclbin2\0" + bytes(64))
    with pytest.raises(ContractError, match="not an emulated xclbin"):
        open_xrt(GEMM, build_dir=folder)


# -- instruction headers ------------------------------------------------------------


def test_header_words_follow_mlir_aie():
    """The header mlir-aie's own translation test expects for an npu1 stream of three
    operations and 104 bytes (test/npu-xrt/... CHECK lines 06030100, 00000105, 3, 0x68)."""
    words = insts.header_words("npu1", 5, 3, 104)
    assert [int(w) for w in words] == [0x06030100, 0x00000105, 3, 0x68]
    assert insts.generation_of(insts.header_words("npu2", 8, 1, 16)) == "npu2"
    stream = np.concatenate([words, np.zeros(22, np.uint32)])  # 26 words = 104 bytes
    assert insts.header_problem(stream, "npu1") is None
    assert "byte 2 is 3 (built for npu1), expected 4" in insts.header_problem(stream, "npu2")
    assert "word 3 says 104 bytes, the stream has 100" in insts.header_problem(stream[:-1], "npu1")
    assert "too short" in insts.header_problem(stream[:3], "npu1")


def test_emulated_streams_carry_a_valid_header():
    for contract in (GEMM, TILE16):
        for generation in ("npu1", "npu2"):
            block = known_answer.block_of(contract, generation)
            words = emulator.instructions(contract, block, generation)
            assert insts.header_problem(words, generation) is None
            assert insts.header_problem(words, "npu2" if generation == "npu1" else "npu1")


@pytest.mark.parametrize("damage", ["generation", "cut", "padded"])
def test_open_checks_every_insts_file_header(tmp_path, damage):
    folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN, BLOCK])
    target = folder / GEMM.instruction_file(BLOCK)  # not the known-answer block's file
    words = np.fromfile(target, "<u4")
    if damage == "generation":
        words = emulator.instructions(GEMM, (256, 128, 512), "npu2")  # an npu2 build
    elif damage == "cut":
        words = words[:-1]
    else:
        words = np.r_[words, 0].astype(np.uint32)
    words.tofile(target)
    expected = {
        "generation": "header byte 2 is 4 (built for npu2), expected 3 for npu1",
        "cut": f"header word 3 says {4 * WORDS} bytes, the stream has {4 * WORDS - 4}",
        "padded": f"header word 3 says {4 * WORDS} bytes, the stream has {4 * WORDS + 4}",
    }[damage]
    with pytest.raises(ContractError) as info:
        open_xrt(GEMM, build_dir=folder)
    assert f"instruction file {target}: {expected}" in str(info.value)
    assert "GEN=npu1" in str(info.value)


def make_rig(**options):
    dev = emulator.device(0, **options)
    ctx = emulator.hw_context(dev, dev.register_xclbin(emulator.xclbin(GEMM)))
    return dev, ctx, emulator.kernel(ctx, GEMM.kernel_name)


def raw_run(kernel, dev, words, n_insts, rng):
    """One pyxrt-level run of KNOWN with ``words`` as its instructions: (state, c, a @ b)."""
    m, k, n = KNOWN
    a, b = random_int8(rng, (m, k)), random_int8(rng, (k, n))
    instr = emulator.bo(dev, max(words.nbytes, 64), emulator.bo.cacheable, kernel.group_id(1))
    instr.write(words, 0)
    instr.sync(TO, words.nbytes, 0)
    bos = []
    for arg, data in ((3, a), (4, b), (5, np.full(m * n, 7, np.int32))):
        bo = emulator.bo(dev, data.nbytes, emulator.bo.host_only, kernel.group_id(arg))
        bo.write(data, 0)
        bo.sync(TO, data.nbytes, 0)
        bos.append(bo)
    state = kernel(3, instr, n_insts, *bos).wait()
    bos[2].sync(FROM, m * n * 4, 0)
    c = bos[2].read(m * n * 4, 0).view(np.int32).reshape(m, n)
    return state, c, exact(a, b)


def test_the_emulator_refuses_a_header_of_another_generation_or_size(rng):
    dev, ctx, kernel = make_rig()
    try:
        good = emulator.instructions(GEMM, KNOWN)
        state, c, want = raw_run(kernel, dev, good, len(good), rng)
        assert state == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(c, want)
        resized = good.copy()
        resized[3] += 4  # the header's size word
        with pytest.raises(MalformedInstructions, match="header size"):
            emulator.decode(resized)
        npu2 = emulator.instructions(GEMM, (256, 64, 512), "npu2")
        for words in (resized, npu2):
            assert raw_run(kernel, dev, words, len(words), rng)[0] == S.ERT_CMD_STATE_ERROR
    finally:
        ctx.close()


# -- the instruction count ------------------------------------------------------------


def test_count_unit_is_a_validated_contract_field():
    assert GEMM.instr_count_unit == "words"
    assert GEMM.instruction_count(4 * WORDS) == WORDS
    assert GEMM.with_count_unit("bytes").instruction_count(4 * WORDS) == 4 * WORDS
    with pytest.raises(ContractError, match="count unit"):
        GEMM.with_count_unit("dwords")
    raw = json.loads(Path(GEMM.source).read_text())
    raw["instructions"]["count_unit"] = "elements"
    with pytest.raises(ContractError, match="count_unit"):
        parse_contract(raw)


@pytest.mark.parametrize("firmware", ["words", "bytes"])
def test_a_count_in_the_wrong_unit_completes_with_zeros(rng, firmware):
    """What a firmware reading the other unit gives: COMPLETED, nothing computed."""
    dev, ctx, kernel = make_rig(insts_unit=firmware)
    try:
        words = emulator.instructions(GEMM, KNOWN)
        right = len(words) if firmware == "words" else words.nbytes
        wrong = words.nbytes if firmware == "words" else len(words)
        state, c, want = raw_run(kernel, dev, words, right, rng)
        assert state == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(c, want)
        for count in (wrong, right + 1):
            state, c, want = raw_run(kernel, dev, words, count, rng)
            assert state == S.ERT_CMD_STATE_COMPLETED
            assert not c.any() and want.any()
        with pytest.raises(DriverRuleError, match="n_insts"):
            raw_run(kernel, dev, words, 0, rng)
    finally:
        ctx.close()


def test_the_device_passes_n_insts_in_the_contracts_unit(tmp_path, rng):
    """A bytes contract on a bytes firmware opens and computes; either on the other fails."""
    as_bytes = GEMM.with_count_unit("bytes")
    with NpuDevice.open(as_bytes, device="emulator", insts_unit="bytes") as npu:
        gemm_block(npu, rng, BLOCK)
    folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN, BLOCK])
    with open_xrt(as_bytes, build_dir=folder, insts_unit="bytes") as npu:
        gemm_block(npu, rng, BLOCK)
    for contract, firmware in ((as_bytes, "words"), (GEMM, "bytes")):
        with pytest.raises(DeviceError, match="all zero"):
            NpuDevice.open(contract, device="emulator", insts_unit=firmware)


# -- the known-answer run ---------------------------------------------------------------


@pytest.mark.parametrize("contract", [GEMM, TILE16], ids=lambda c: c.name)
@pytest.mark.parametrize("generation", ["npu1", "npu2"])
def test_known_answer_operands_and_their_product(contract, generation):
    block = known_answer.block_of(contract, generation)
    a, b = known_answer.operands(block)
    product = exact(a, b)
    assert a.dtype == b.dtype == np.int8 and a.shape == block[:2] and b.shape == block[1:]
    assert np.count_nonzero(product) == product.size  # every element nonzero
    want = known_answer.expected(contract, block)
    if contract is TILE16:
        np.testing.assert_array_equal(want, reference.tile16_kernel(a, b))
    else:
        np.testing.assert_array_equal(want, product)


@pytest.mark.parametrize(
    "options",
    [{"zeros": True}, {"insts_unit": "bytes"}],
    ids=["zeros", "wrong-unit"],
)
@pytest.mark.parametrize("backend", ["emulator", "xrt"])
def test_open_refuses_a_kernel_that_completes_without_computing(tmp_path, options, backend):
    if backend == "xrt":
        folder = emulator.write_build(GEMM, tmp_path / "b", "npu1", [KNOWN])
        opening = {"device": "xrt", "xrt_module": emulator, "build_dir": folder}
    else:
        opening = {"device": "emulator"}
    with pytest.raises(DeviceError) as info:
        NpuDevice.open(GEMM, **opening, **options)
    message = str(info.value)
    assert "known-answer run of 'gemm_i8_i32' (block (256, 64, 256))" in message
    assert "completed with its output all zero" in message
    assert "GEN=npu1" in message and "count_unit to 'bytes'" in message
    # What doctor will call next: the other unit helps only when the unit was wrong.
    other = known_answer.try_other_count_unit(GEMM, **opening, **options)
    assert other == ("bytes" if "insts_unit" in options else None)


def test_a_wrong_answer_that_is_not_zeros_is_refused(monkeypatch):
    monkeypatch.setattr(
        known_answer,
        "expected",
        lambda contract, block: np.ones((block[0], block[2]), np.int32),
    )
    with pytest.raises(DeviceError, match=r"with 65536 of 65536 values wrong"):
        NpuDevice.open(GEMM, device="emulator")


def test_planned_faults_count_the_runs_after_the_known_answer(rng):
    with NpuDevice.open(
        GEMM, device="emulator", faults=[Fault(FaultKind.ERROR, run_index=1)]
    ) as npu:
        gemm_block(npu, rng, KNOWN)  # run 0 of yours
        with pytest.raises(DeviceError, match="ERT_CMD_STATE_ERROR"):
            gemm_block(npu, rng, KNOWN)  # run 1: the fault
        gemm_block(npu, rng, BLOCK)


# -- the design against mlir-aie v1.3.4 ---------------------------------------------------


def test_design_calls_only_what_mlir_aie_v134_has():
    """What reading v1.3.4's sources found (kernels/README.md): no placer module, no
    `placement=` keyword (v1.3.4 says `tile=`), `resolve_program()` without a placer,
    and the dynamic ObjectFIFO lowering on every Worker. Not a compile: a guard."""
    import ast

    design = Path(CHECKOUT.source).parent / "design.py"
    tree = ast.parse(design.read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert {"aie.iron", "aie.iron.controlflow", "aie.iron.device", "aie.helpers.taplib"} <= imported
    assert not imported & {"aie.iron.placers", "aie.dialects.index", "aie.ir"}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    keywords = {kw.arg for call in calls for kw in call.keywords}
    assert "placement" not in keywords and "tile" in keywords

    def named(call, name):
        func = call.func
        return getattr(func, "attr", getattr(func, "id", None)) == name

    (resolve,) = [call for call in calls if named(call, "resolve_program")]
    assert not resolve.args and not resolve.keywords
    (worker,) = [call for call in calls if named(call, "Worker")]
    assert any(
        kw.arg == "dynamic_objfifo_lowering" and getattr(kw.value, "value", None) is True
        for kw in worker.keywords
    )
    makefile = (design.parent / "Makefile").read_text()
    recipes = [line for line in makefile.splitlines() if line.startswith("\t")]
    assert "mlir_aie==1.3.4" in makefile
    assert not any("--aie-only-generate-npu" in line for line in recipes)


def test_a_known_answer_run_that_fails_leaves_nothing_pinned_by_the_kept_error():
    """A device that emulates npu1 but reports a Strix name gets npu2 streams: the
    known-answer run ends in ERROR. The caller keeps the DeviceError (as retry
    loops do); no BO and no locked page stays alive through its traceback."""
    with pytest.raises(DeviceError, match="ERT_CMD_STATE_ERROR") as info:
        NpuDevice.open(GEMM, device="emulator", name="NPU Strix", generation="npu1")
    kept = info.value
    gc.collect()  # cycles of frames are the collector's; a pinning traceback is not
    assert (emulator.live_bos(), emulator.locked_bytes()) == (0, 0)
    assert kept.__traceback__ is not None  # still a usable error
