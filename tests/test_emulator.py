"""The emulated NPU: pyxrt's API, exact compute, and every driver rule it enforces."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import exact, random_int8
from hypothesis import given
from hypothesis import strategies as st

from npu_pipeline import emulator as xrt
from npu_pipeline import reference
from npu_pipeline.contract import load_contract
from npu_pipeline.emulator._buffers import Use
from npu_pipeline.emulator._compute import Scratch, execute
from npu_pipeline.emulator._instructions import MalformedInstructions
from npu_pipeline.errors import (
    BufferHazardError,
    ContractError,
    DeviceError,
    DriverRuleError,
)
from npu_pipeline.reference import Rounding, Saturation

ROOT = Path(__file__).resolve().parent.parent
GEMM = load_contract("gemm_i8_i32")
TILE16 = load_contract("tile16_legacy")
TO = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
FROM = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
S = xrt.ert_cmd_state
BLOCK = (256, 64, 256)  # the smallest legal gemm_i8_i32 block on npu1
C_BYTES = 256 * 256 * 4


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test must leave no device thread and no BO behind."""
    yield
    gc.collect()
    assert xrt.live_device_threads() == 0
    assert xrt.live_bos() == 0


@dataclasses.dataclass
class Rig:
    """An open device, hardware context and kernel of one contract."""

    dev: xrt.device
    ctx: xrt.hw_context
    kernel: xrt.kernel
    contract: object

    def instr(self, block, generation="npu1"):
        """A synced instruction BO for ``block`` and its n_insts."""
        words = xrt.instructions(self.contract, block, generation)
        bo = xrt.bo(self.dev, words.nbytes, xrt.bo.cacheable, self.kernel.group_id(1))
        bo.write(words, 0)
        bo.sync(TO)
        return bo, len(words)

    def recreated(self):
        """A new hardware context and kernel on the device: after a run failed, the
        old context is out of step with its design (see tests/test_device_recovery.py)."""
        ctx = xrt.hw_context(self.dev, self.ctx.get_xclbin_uuid())
        return Rig(self.dev, ctx, xrt.kernel(ctx, "MLIR_AIE"), self.contract)

    def data(self, arg, nbytes, payload=None):
        """A host_only BO for argument ``arg``, optionally written and synced."""
        bo = xrt.bo(self.dev, nbytes, xrt.bo.host_only, self.kernel.group_id(arg))
        if payload is not None:
            bo.write(payload, 0)
            bo.sync(TO)
        return bo


@contextlib.contextmanager
def rig(contract=GEMM, **options):
    dev = xrt.device(0, **options)
    try:
        ctx = xrt.hw_context(dev, dev.register_xclbin(xrt.xclbin(contract)))
        yield Rig(dev, ctx, xrt.kernel(ctx, "MLIR_AIE"), contract)
    finally:
        dev.close()


def gemm_run(r, a, b, c_bo=None, instr=None):
    """Start one gemm run of a @ b; return (run, bo_c)."""
    (m, k), n = a.shape, b.shape[1]
    instr_bo, n_insts = instr or r.instr((m, k, n))
    bo_a, bo_b = r.data(3, a.nbytes, a), r.data(4, b.nbytes, b)
    bo_c = c_bo or r.data(5, m * n * 4)
    return r.kernel(3, instr_bo, n_insts, bo_a, bo_b, bo_c), bo_c


def read_c(bo_c, m, n):
    bo_c.sync(FROM)
    return bo_c.read(m * n * 4, 0).view(np.int32).reshape(m, n)


def operands(rng, block=BLOCK):
    m, k, n = block
    return random_int8(rng, (m, k)), random_int8(rng, (k, n))


def slow(seconds):
    """A timing model: every run takes ``seconds`` of modelled device time."""
    return lambda contract, block: seconds


# -- the pyxrt surface --------------------------------------------------------------


def test_enum_values_match_xrt():
    assert {s.name: int(s) for s in S} == {
        "ERT_CMD_STATE_NEW": 1,
        "ERT_CMD_STATE_QUEUED": 2,
        "ERT_CMD_STATE_COMPLETED": 4,
        "ERT_CMD_STATE_ERROR": 5,
        "ERT_CMD_STATE_ABORT": 6,
        "ERT_CMD_STATE_SUBMITTED": 7,
        "ERT_CMD_STATE_TIMEOUT": 8,
        "ERT_CMD_STATE_NORESPONSE": 9,
        "ERT_CMD_STATE_SKERROR": 10,
        "ERT_CMD_STATE_SKCRASHED": 11,
    }
    flags = {"normal": 0, "cacheable": 1 << 24, "svm": 1 << 27, "device_only": 1 << 28}
    flags |= {"host_only": 1 << 29, "p2p": 1 << 30}
    assert {f.name: int(f) for f in xrt.bo.flags} == flags
    assert all(int(getattr(xrt.bo, name)) == value for name, value in flags.items())
    assert (int(TO), int(FROM)) == (0, 1)
    assert xrt.XCL_BO_FLAGS_NONE == 0 and xrt.enumerate_devices() == 1


def test_host_program_example_is_bit_exact(capsys):
    spec = importlib.util.spec_from_file_location("host", ROOT / "examples/pyxrt_host_program.py")
    program = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(program)
    assert program.EMULATED
    assert program.main([]) == 0
    out = capsys.readouterr().out
    assert "gemm_i8_i32 256x128x256 bit-exact: True" in out
    assert "tile16_legacy 16x16x16 bit-exact: True" in out


def test_xclbin_names_its_contract(tmp_path):
    beside = xrt.xclbin(ROOT / "kernels/gemm_i8_i32/final.xclbin")
    assert beside.contract.name == "gemm_i8_i32"
    assert xrt.xclbin(ROOT / "kernels/gemm_i8_i32/kernel.json").get_uuid() == beside.get_uuid()
    assert [k.get_name() for k in beside.get_kernels()] == ["MLIR_AIE"]
    assert beside.get_kernels()[0].get_num_args() == 6
    with pytest.raises(ContractError, match=r"final\.xclbin"):
        xrt.xclbin(ROOT / "kernels/gemm_i8_i32/other.xclbin")


def test_device_context_and_kernel_checks():
    with pytest.raises(DeviceError, match="index 1"):
        xrt.device(1)
    with rig() as r:
        assert r.dev.get_info(xrt.xrt_info_device.name) == "NPU Phoenix"
        assert r.ctx.get_device() is r.dev and r.ctx.get_xclbin().contract is GEMM
        assert [r.kernel.group_id(i) for i in (1, 3, 4, 5)] == [1, 3, 4, 5]
        with pytest.raises(DriverRuleError, match="no memory group"):
            r.kernel.group_id(0)
        with pytest.raises(DriverRuleError, match="no kernel"):
            xrt.kernel(r.ctx, "OTHER")
        other = xrt.device(0)
        with pytest.raises(DriverRuleError, match="not registered"):
            xrt.hw_context(other, r.ctx.get_xclbin_uuid())


# -- exact compute ------------------------------------------------------------------


SCRATCH = Scratch()  # shared across examples, as a device thread shares its own


def tiled(x, tr, tc):
    """A matrix in the tile_major layout: row-major (tr x tc) tiles, tiles row-major."""
    rows, cols = x.shape
    return x.reshape(rows // tr, tr, cols // tc, tc).transpose(0, 2, 1, 3).reshape(rows, cols)


def layout_buffers(layout, a, b, tile):
    """(A, B) as the layout lays them out, and a function laying out C the same way."""
    r, s, t = tile
    if layout == "row_major":
        return a, b, lambda c: c
    return tiled(a, r, s), tiled(b, s, t), lambda c: tiled(c, r, t)


@given(
    m=st.integers(1, 16).map(lambda x: 4 * x),
    k=st.integers(1, 512).map(lambda x: 8 * x),
    n=st.integers(1, 8).map(lambda x: 8 * x),
    layout=st.sampled_from(["row_major", "tile_major"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_block_compute_is_exact(m, k, n, layout, seed):
    """The device thread's compute on any micro-tile multiple, K up to 4096, either layout."""
    contract = dataclasses.replace(GEMM, layout=layout)
    rng = np.random.default_rng(seed)
    a, b = operands(rng, (m, k, n))
    a_buf, b_buf, lay_c = layout_buffers(layout, a, b, contract.target("npu1").micro_tile)
    buffers = {
        "a": a_buf.view(np.uint8).ravel(),
        "b": b_buf.view(np.uint8).ravel(),
        "c": np.zeros(4 * m * n, dtype=np.uint8),
    }
    stream = xrt.InstructionStream("block_gemm", "npu1", (m, k, n), layout)
    execute(contract, stream, buffers, SCRATCH)
    np.testing.assert_array_equal(buffers["c"].view(np.int32).reshape(m, n), lay_c(exact(a, b)))


@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("saturation", list(Saturation))
def test_int8_output_narrows_like_the_golden_model(rng, rounding, saturation):
    """A tile-pair contract with any SRS mode in its output section."""
    output = dataclasses.replace(TILE16.output, rounding=rounding, saturation=saturation)
    contract = dataclasses.replace(TILE16, output=output)
    a, b = random_int8(rng, (16, 16)), random_int8(rng, (16, 16))
    buffers = {
        "in": np.concatenate([a.ravel(), b.ravel()]).view(np.uint8),
        "out": np.zeros(256, np.uint8),
    }
    execute(
        contract,
        xrt.InstructionStream("tile_pair", "npu1", (16, 16, 16), "row_major"),
        buffers,
        SCRATCH,
    )
    expected = reference.srs(exact(a, b), 7, rounding, saturation)
    np.testing.assert_array_equal(buffers["out"].view(np.int8).reshape(16, 16), expected)


@pytest.mark.parametrize("saturation", list(Saturation))
@pytest.mark.parametrize("k", [16, 2048])
def test_floor_narrowing_is_exact_across_k_chunks(rng, k, saturation):
    """Floor SRS of a float32 product (K <= 1024) and of an int32 chunk sum (K > 1024)."""
    output = dataclasses.replace(TILE16.output, saturation=saturation)
    contract = dataclasses.replace(TILE16, output=output)
    a, b = random_int8(rng, (16, k)), random_int8(rng, (k, 16))
    buffers = {
        "in": np.concatenate([a.ravel(), b.ravel()]).view(np.uint8),
        "out": np.zeros(256, np.uint8),
    }
    stream = xrt.InstructionStream("tile_pair", "npu1", (16, k, 16), "row_major")
    execute(contract, stream, buffers, SCRATCH)
    expected = reference.srs(exact(a, b), 7, Rounding.FLOOR, saturation)
    np.testing.assert_array_equal(buffers["out"].view(np.int8).reshape(16, 16), expected)


@pytest.mark.parametrize("layout", ["row_major", "tile_major"])
@pytest.mark.parametrize("block", [(256, 64, 256), (512, 1088, 256)])
def test_emulated_runs_are_exact(rng, layout, block):
    """Legal blocks through the whole emulator, K across a float32 chunk boundary."""
    contract = dataclasses.replace(GEMM, layout=layout)
    a, b = operands(rng, block)
    a_buf, b_buf, lay_c = layout_buffers(layout, a, b, contract.target("npu1").micro_tile)
    with rig(contract) as r:
        run, bo_c = gemm_run(r, a_buf, b_buf)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, block[0], block[2]), lay_c(exact(a, b)))


def test_extreme_values_at_max_k_are_exact():
    """All -128 operands over K = 4096: every partial sum at the chunk bound."""
    a = np.full((256, 4096), -128, dtype=np.int8)
    b = np.full((4096, 256), -128, dtype=np.int8)
    with rig() as r:
        run, bo_c = gemm_run(r, a, b)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        c = read_c(bo_c, 256, 256)
    assert c.min() == c.max() == 4096 * 128 * 128  # exact(a, b), without the slow int64 matmul


def test_tile_pairs_on_sub_buffers_are_exact(rng):
    """tile16_legacy: tile pairs packed into one BO, one sub-buffer per run."""
    pairs = 6
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    packed = np.concatenate([a.reshape(pairs, 256), b.reshape(pairs, 256)], axis=1)
    with rig(TILE16) as r:
        instr, n_insts = r.instr((16, 16, 16))
        bo_in = r.data(3, packed.nbytes, packed)
        bo_out = r.data(4, pairs * 256)
        runs = [
            r.kernel(3, instr, n_insts, xrt.bo(bo_in, 512, 512 * i), xrt.bo(bo_out, 256, 256 * i))
            for i in range(pairs)
        ]
        assert [run.wait() for run in runs] == [S.ERT_CMD_STATE_COMPLETED] * pairs
        bo_out.sync(FROM)
        out = bo_out.read(pairs * 256, 0).reshape(pairs, 16, 16)
    for i in range(pairs):
        np.testing.assert_array_equal(out[i], reference.tile16_kernel(a[i], b[i]))


# -- instruction stream -----------------------------------------------------------


def test_instruction_stream_round_trips_and_rejects_damage():
    words = xrt.instructions(GEMM, (256, 128, 512), "npu2")
    assert words.dtype == np.uint32
    stream = xrt.InstructionStream("block_gemm", "npu2", (256, 128, 512), "row_major")
    assert xrt.decode(words) == stream
    for damaged in (words[:-1], np.r_[words, 0].astype(np.uint32)):
        with pytest.raises(MalformedInstructions, match="words"):
            xrt.decode(damaged)
    flipped = words.copy()
    flipped[5] += 8
    with pytest.raises(MalformedInstructions, match="checksum"):
        xrt.decode(flipped)
    with pytest.raises(ContractError):
        xrt.instructions(GEMM, (128, 64, 256))  # off the npu1 block grid


# A count that does not match the stream completes with zeros: tests/test_builds.py.
@pytest.mark.parametrize("problem", ["unsynced", "corrupt", "generation"])
def test_bad_instruction_stream_ends_in_error(rng, problem):
    """The firmware fails a run whose instructions it cannot use: ERT_CMD_STATE_ERROR."""
    a, b = operands(rng)
    with rig() as r:
        block = (256, 64, 512) if problem == "generation" else BLOCK
        words = xrt.instructions(GEMM, block, "npu2" if problem == "generation" else "npu1")
        if problem == "corrupt":
            words[4] ^= 1
        instr = xrt.bo(r.dev, 4 * 16, xrt.bo.cacheable, 1)
        instr.write(words, 0)
        if problem != "unsynced":
            instr.sync(TO)
        run, _ = gemm_run(r, a, b, instr=(instr, len(words)))
        assert run.wait() == S.ERT_CMD_STATE_ERROR


def test_instruction_stream_is_read_again_after_every_sync(rng):
    """The decoded stream is reused only while the instruction BO's device copy is unchanged."""
    a, b = operands(rng)
    with rig() as r:
        words = xrt.instructions(GEMM, BLOCK)
        instr = xrt.bo(r.dev, words.nbytes, xrt.bo.cacheable, 1)
        instr.write(words, 0)
        instr.sync(TO)
        assert gemm_run(r, a, b, instr=(instr, len(words)))[0].wait() == S.ERT_CMD_STATE_COMPLETED
        damaged = words.copy()
        damaged[4] ^= 1
        instr.write(damaged, 0)  # not synced: the device still holds the good stream
        assert gemm_run(r, a, b, instr=(instr, len(words)))[0].wait() == S.ERT_CMD_STATE_COMPLETED
        instr.sync(TO)
        assert gemm_run(r, a, b, instr=(instr, len(words)))[0].wait() == S.ERT_CMD_STATE_ERROR
        instr.write(words, 0)
        instr.sync(TO)
        # The failed run left the context out of step: the good stream runs on a new one.
        run, bo_c = gemm_run(r.recreated(), a, b, instr=(instr, len(words)))
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


# -- driver rules -------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["normal", "device_only", "p2p", "svm"])
def test_rejected_bo_flags(flag):
    dev = xrt.device(0)
    with pytest.raises(DriverRuleError, match=flag) as info:
        xrt.bo(dev, 64, getattr(xrt.bo, flag), 3)
    assert isinstance(info.value, RuntimeError)  # what real pyxrt raises


def test_kernel_arguments_are_checked(rng):
    a, b = operands(rng)
    m, _, n = BLOCK
    with rig() as r:
        instr, n_insts = r.instr(BLOCK)
        bo_a, bo_b, bo_c = r.data(3, a.nbytes, a), r.data(4, b.nbytes, b), r.data(5, m * n * 4)
        cacheable_a = xrt.bo(r.dev, a.nbytes, xrt.bo.cacheable, 3)
        host_instr = xrt.bo(r.dev, instr.size(), xrt.bo.host_only, 1)
        wrong_group = xrt.bo(r.dev, a.nbytes, xrt.bo.host_only, 4)
        small_c = r.data(5, m * n * 4 - 4)
        need = f"at least {m * n * 4} bytes"
        cases = {
            "opcode": (2, instr, n_insts, bo_a, bo_b, bo_c),
            "arguments set": (3, instr, n_insts, bo_a, bo_b),
            "flags host_only": (3, host_instr, n_insts, bo_a, bo_b, bo_c),
            "flags cacheable": (3, instr, n_insts, cacheable_a, bo_b, bo_c),
            "memory group 4": (3, instr, n_insts, wrong_group, bo_b, bo_c),
            "n_insts": (3, instr, 0, bo_a, bo_b, bo_c),
            need: (3, instr, n_insts, bo_a, bo_b, small_c),
        }
        for message, args in cases.items():
            with pytest.raises(DriverRuleError, match=message):
                r.kernel(*args)
        assert r.kernel(3, instr, n_insts, bo_a, bo_b, bo_c).wait() == S.ERT_CMD_STATE_COMPLETED


def test_sub_buffer_rules():
    dev = xrt.device(0)
    root = xrt.bo(dev, 1024, xrt.bo.host_only, 3)
    sub = xrt.bo(root, 256, 512)
    sub.write(np.arange(256, dtype=np.uint8), 0)
    assert root.read(256, 512).view(np.uint8).tolist() == list(range(256))
    assert sub.address() == root.address() + 512 and sub.size() == 256
    with pytest.raises(DriverRuleError, match="outside"):
        xrt.bo(root, 256, 800)
    with pytest.raises(DriverRuleError, match="root BO"):
        xrt.bo(sub, 16, 0)


def test_missing_sync_to_device_gives_stale_inputs(rng):
    """The device computes with the bytes of the last sync(TO_DEVICE), not the newest."""
    a, b = operands(rng)
    a2, _ = operands(rng)
    m, _, n = BLOCK
    with rig() as r:
        instr = r.instr(BLOCK)
        bo_a, bo_b, bo_c = r.data(3, a.nbytes, a), r.data(4, b.nbytes, b), r.data(5, m * n * 4)
        assert r.kernel(3, *instr, bo_a, bo_b, bo_c).wait() == S.ERT_CMD_STATE_COMPLETED
        bo_a.write(a2, 0)  # no sync
        assert r.kernel(3, *instr, bo_a, bo_b, bo_c).wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, m, n), exact(a, b))
        bo_a.sync(TO)
        assert r.kernel(3, *instr, bo_a, bo_b, bo_c).wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, m, n), exact(a2, b))


def test_missing_sync_from_device_gives_stale_output(rng):
    a, b = operands(rng)
    m, _, n = BLOCK
    with rig() as r:
        run, bo_c = gemm_run(r, a, b)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        assert not bo_c.read(m * n * 4, 0).any()  # still the zeroed host bytes
        np.testing.assert_array_equal(read_c(bo_c, m, n), exact(a, b))


def touch(bo, action):
    """Host access to a BO: ``write``, ``sync`` or ``map``."""
    if action == "write":
        bo.write(np.zeros(8, np.uint8), 0)
    elif action == "sync":
        bo.sync(FROM)
    else:
        bo.map()


@pytest.mark.parametrize("action", ["write", "sync", "map"])
def test_host_access_to_a_bo_in_flight_is_a_hazard(rng, action):
    a, b = operands(rng)
    with rig(timing=slow(0.3)) as r:
        run, bo_c = gemm_run(r, a, b)
        for bo in (bo_c, xrt.bo(bo_c, 64, 0)):
            with pytest.raises(BufferHazardError, match=action):
                touch(bo, action)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


def test_write_through_an_earlier_map_view_is_detected(rng):
    """Such writes cannot be intercepted: the run ends in ERROR and wait() raises the hazard."""
    a, b = operands(rng)
    with rig(timing=slow(0.2)) as r:
        bo_a = r.data(3, a.nbytes, a)
        view = np.frombuffer(bo_a.map(), dtype=np.int8)
        instr = r.instr(BLOCK)
        run = r.kernel(3, *instr, bo_a, r.data(4, b.nbytes, b), r.data(5, C_BYTES))
        view[0] ^= 1  # the bug the seed's pipelined executor had
        with pytest.raises(BufferHazardError, match=r"map\(\) view"):
            run.wait()
        assert run.state() == S.ERT_CMD_STATE_ERROR
        # Untouched while in flight: no hazard.
        run = r.kernel(3, *instr, bo_a, r.data(4, b.nbytes, b), r.data(5, C_BYTES))
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED


@pytest.mark.parametrize("size", [100, 16 * 1024, 16 * 1024 + 3])
def test_mapped_write_detection_sees_any_changed_byte(size):
    """Short ranges are checksummed, long ones copied: either way one flipped bit shows."""
    dev = xrt.device(0)
    bo = xrt.bo(dev, size + 8, xrt.bo.host_only, 3)
    view = np.frombuffer(bo.map(), dtype=np.uint8)
    use = Use(bo._storage, 4, 4 + size, False, 0)
    use.watch()
    assert not use.host_changed()
    view[3 + size] ^= 1  # the last byte of the range
    assert use.host_changed()
    view[3 + size] ^= 1
    view[4 + size] ^= 1  # the first byte after it
    assert not use.host_changed()


def test_two_runs_in_flight_may_not_share_an_output(rng):
    a, b = operands(rng)
    with rig(timing=slow(0.2)) as r:
        run, bo_c = gemm_run(r, a, b)
        with pytest.raises(BufferHazardError, match="still in flight"):
            gemm_run(r, a, b, c_bo=bo_c)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED


def test_fifth_start_blocks_until_a_run_completes(rng):
    a, b = operands(rng)
    with rig(timing=slow(0.15)) as r:
        instr = r.instr(BLOCK)
        began = time.perf_counter()
        runs = [gemm_run(r, a, b, instr=instr)[0] for _ in range(4)]
        fifth, _ = gemm_run(r, a, b, instr=instr)  # blocks: the device completes run 0 alone
        assert time.perf_counter() - began >= 0.15  # run 0's modelled completion
        assert runs[0].state() == S.ERT_CMD_STATE_COMPLETED
        assert [run.wait() for run in [*runs, fifth]] == [S.ERT_CMD_STATE_COMPLETED] * 5


def test_wait_with_timeout_leaves_the_run_running(rng):
    a, b = operands(rng)
    with rig(timing=slow(0.2)) as r:
        run, bo_c = gemm_run(r, a, b)
        assert run.wait(5) == S.ERT_CMD_STATE_TIMEOUT
        assert run.state() == S.ERT_CMD_STATE_NEW
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


def test_timing_model_holds_runs_to_modelled_time(rng):
    """completion = max(start, previous completion) + run_seconds, FIFO."""
    a, b = operands(rng)
    with rig(timing=slow(0.1)) as r:
        instr = r.instr(BLOCK)
        began = time.perf_counter()
        runs = [gemm_run(r, a, b, instr=instr)[0] for _ in range(3)]
        done = []
        for run in runs:
            assert run.wait() == S.ERT_CMD_STATE_COMPLETED
            done.append(time.perf_counter() - began)
    assert done[0] >= 0.1 and done[1] >= 0.2 and done[2] >= 0.3


def test_watchdog_times_out_a_long_run_and_aborts_the_rest(rng):
    a, b = operands(rng)

    class Profile:  # what a DeviceProfile offers the emulator
        watchdog_s = 0.1

        def run_seconds(self, contract, block):
            return 5.0

    with rig(timing=Profile()) as r:
        instr = r.instr(BLOCK)
        began = time.perf_counter()
        first, second = (gemm_run(r, a, b, instr=instr)[0] for _ in range(2))
        assert first.wait() == S.ERT_CMD_STATE_TIMEOUT
        assert 0.1 <= time.perf_counter() - began < 2.0
        assert second.wait() == S.ERT_CMD_STATE_ABORT


# -- injected faults --------------------------------------------------------------


def test_injected_error_fails_only_its_run(rng):
    """The run fails without writing its output; a new context then serves exactly."""
    a, b = operands(rng)
    with rig(faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=1)]) as r:
        instr = r.instr(BLOCK)
        results = [gemm_run(r, a, b, instr=instr) for _ in range(2)]
        states = [run.wait() for run, _ in results]
        assert states == [S.ERT_CMD_STATE_COMPLETED, S.ERT_CMD_STATE_ERROR]
        assert not read_c(results[1][1], *BLOCK[::2]).any()  # output never written
        run, bo_c = gemm_run(r.recreated(), a, b, instr=instr)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


def test_injected_hang_ends_by_watchdog_and_a_new_context_serves(rng):
    a, b = operands(rng)
    with rig(watchdog_s=0.1, timing=slow(0.05)) as r:
        assert xrt.inject_fault(r.ctx, xrt.FaultKind.HANG) == 0
        instr = r.instr(BLOCK)
        hung, queued = (gemm_run(r, a, b, instr=instr)[0] for _ in range(2))
        assert hung.wait() == S.ERT_CMD_STATE_TIMEOUT
        assert queued.wait() == S.ERT_CMD_STATE_ABORT
        run, bo_c = gemm_run(r.recreated(), a, b, instr=instr)
        assert run.wait() == S.ERT_CMD_STATE_COMPLETED
        np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


def test_injected_device_loss_fails_every_later_call(rng):
    a, b = operands(rng)
    with rig(timing=slow(0.05)) as r:
        instr = r.instr(BLOCK)
        xrt.inject_fault(r.dev, xrt.FaultKind.DEVICE_LOST, run_index=1)
        (ok, _), (lost, bo_c), (queued, _) = (gemm_run(r, a, b, instr=instr) for _ in range(3))
        assert ok.wait() == S.ERT_CMD_STATE_COMPLETED
        assert lost.wait() == S.ERT_CMD_STATE_ABORT
        assert queued.wait() == S.ERT_CMD_STATE_ABORT
        calls = {
            "bo allocation": lambda: xrt.bo(r.dev, 64, xrt.bo.host_only, 3),
            "sync": lambda: bo_c.sync(FROM),
            "start": lambda: r.kernel(3, *instr, *ok._args[3:]),
            "hw_context creation": lambda: xrt.hw_context(r.dev, r.ctx.get_xclbin_uuid()),
        }
        for what, call in calls.items():
            with pytest.raises(DeviceError, match=f"{what} failed: No such device") as info:
                call()
            assert isinstance(info.value, RuntimeError)


def test_fault_for_a_started_run_is_refused(rng):
    a, b = operands(rng)
    with rig() as r:
        gemm_run(r, a, b)[0].wait()
        with pytest.raises(DeviceError, match="already started"):
            xrt.inject_fault(r.dev, xrt.FaultKind.ERROR, run_index=0)
    with pytest.raises(TypeError, match="emulated device"):
        xrt.inject_fault(object(), xrt.FaultKind.ERROR)


# -- runlist ----------------------------------------------------------------------

#: What a failed runlist.wait raises, as XRT's runlist::command_error says it.
FAILED_CHAIN = r"runlist failed execution \(ERT_CMD_STATE_{state}\): run {run} "


def test_runlist_runs_in_order_and_reports_the_failed_run(rng):
    a, b = operands(rng)
    with rig(faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=4)]) as r:
        instr = r.instr(BLOCK)
        outs = []
        for expect_fail in (False, True):
            chain = xrt.runlist(r.ctx)
            runs = []
            for _ in range(3):
                run = xrt.run(r.kernel)
                bo_c = r.data(5, C_BYTES)
                for i, value in enumerate(
                    (3, *instr, r.data(3, a.nbytes, a), r.data(4, b.nbytes, b), bo_c)
                ):
                    run.set_arg(i, value)
                chain.add(run)
                runs.append(run)
                outs.append(bo_c)
            chain.execute()
            if expect_fail:
                with pytest.raises(DeviceError, match=FAILED_CHAIN.format(state="ERROR", run=1)):
                    chain.wait()
                assert [run.state() for run in runs] == [  # as XRT marks them
                    S.ERT_CMD_STATE_NEW,
                    S.ERT_CMD_STATE_ERROR,
                    S.ERT_CMD_STATE_ABORT,
                ]
            else:
                assert chain.wait() is None
        for bo_c in outs[:3]:
            np.testing.assert_array_equal(read_c(bo_c, *BLOCK[::2]), exact(a, b))


def gemm_chain(r, instr, a, b, runs=3):
    """A runlist of ``runs`` gemm runs of a @ b, each with its own BOs; (chain, runs, outputs)."""
    chain, members, outs = xrt.runlist(r.ctx), [], []
    for _ in range(runs):
        run = xrt.run(r.kernel)
        bo_c = r.data(5, C_BYTES)
        for i, value in enumerate(
            (3, *instr, r.data(3, a.nbytes, a), r.data(4, b.nbytes, b), bo_c)
        ):
            run.set_arg(i, value)
        chain.add(run)
        members.append(run)
        outs.append(bo_c)
    return chain, members, outs


def test_runlist_rules_follow_xrt(rng):
    """A run joins one runlist once, is started only by it, and a list executing is left alone."""
    a, b = operands(rng)
    with rig(timing=slow(0.1)) as r:
        instr = r.instr(BLOCK)
        chain, members, _ = gemm_chain(r, instr, a, b, runs=2)
        with pytest.raises(DriverRuleError, match="already belongs to a runlist"):
            chain.add(members[0])
        with pytest.raises(DriverRuleError, match="already belongs to a runlist"):
            xrt.runlist(r.ctx).add(members[1])
        with pytest.raises(DriverRuleError, match="belongs to a runlist"):
            members[0].start()
        chain.execute()
        with pytest.raises(DriverRuleError, match="executing"):
            chain.execute()
        with pytest.raises(DriverRuleError, match="executing"):
            chain.add(xrt.run(r.kernel))
        with pytest.raises(TypeError, match="incompatible function arguments"):
            chain.wait(1)  # as pyxrt: the timed overload takes a std::chrono type
        assert chain.wait() is None


def test_runlist_executes_again_with_fresh_data_and_checks(rng):
    """Re-executing a waited-for runlist starts its runs again with their current arguments."""
    a, b = operands(rng)
    a2, _ = operands(rng)
    with rig() as r:
        instr = r.instr(BLOCK)
        chain, members, outs = gemm_chain(r, instr, a, b)
        chain.execute()
        assert chain.wait() is None
        bo_a = members[1]._args[3]
        bo_a.write(a2, 0)
        bo_a.sync(TO)
        chain.execute()
        assert chain.wait() is None
        np.testing.assert_array_equal(read_c(outs[0], *BLOCK[::2]), exact(a, b))
        np.testing.assert_array_equal(read_c(outs[1], *BLOCK[::2]), exact(a2, b))
        # set_arg drops the checks the run passed: a wrong BO is refused again.
        members[2].set_arg(3, xrt.bo(r.dev, a.nbytes, xrt.bo.cacheable, 3))
        with pytest.raises(DriverRuleError, match="flags cacheable"):
            chain.execute()
        members[2].set_arg(3, bo_a)
        chain.execute()
        assert chain.wait() is None


def test_runlist_wait_raises_for_a_failed_run(rng):
    """As XRT's runlist::wait: a failed run raises, and only the run states tell which
    (the exception pyxrt gives is a plain RuntimeError, with no state attribute)."""
    a, b = operands(rng)
    with rig(faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=0)]) as r:
        chain, members, _ = gemm_chain(r, r.instr(BLOCK), a, b, runs=2)
        chain.execute()
        with pytest.raises(DeviceError, match=FAILED_CHAIN.format(state="ERROR", run=0)) as info:
            chain.wait()
        assert info.value.state is None
        assert [run.state() for run in members] == [S.ERT_CMD_STATE_ERROR, S.ERT_CMD_STATE_ABORT]
        assert chain.wait() is None  # idle again, as XRT leaves a list whose wait threw


def test_a_runlist_is_one_command_in_flight(rng):
    """Four runlists of three runs are in flight at once; a fifth execute blocks."""
    a, b = operands(rng)
    with rig(timing=slow(0.05)) as r:
        instr = r.instr(BLOCK)
        chains = [gemm_chain(r, instr, a, b)[0] for _ in range(5)]
        began = time.perf_counter()
        for chain in chains[:4]:
            chain.execute()  # 12 runs, 4 commands: none blocks
        assert time.perf_counter() - began < 0.15
        chains[4].execute()  # blocks until the first list's three runs completed
        assert time.perf_counter() - began >= 0.15
        for chain in chains:
            assert chain.wait() is None


def tile_chain(r, pairs, order=None):
    """A runlist of tile pairs on sub-buffers of one input and one output BO."""
    instr, n_insts = r.instr((16, 16, 16))
    bo_in, bo_out = r.data(3, 512 * pairs), r.data(4, 256 * pairs)
    chain, members = xrt.runlist(r.ctx), []
    for i in order or range(pairs):
        run = xrt.run(r.kernel)
        args = (3, instr, n_insts, xrt.bo(bo_in, 512, 512 * i), xrt.bo(bo_out, 256, 256 * i))
        for j, value in enumerate(args):
            run.set_arg(j, value)
        chain.add(run)
        members.append(run)
    return chain, members, bo_in, bo_out


def pack_pairs(bo_in, a, b):
    bo_in.write(np.concatenate([a.reshape(len(a), 256), b.reshape(len(b), 256)], axis=1), 0)
    bo_in.sync(TO)


def tile_outputs(bo_out, pairs):
    bo_out.sync(FROM)
    return bo_out.read(256 * pairs, 0).reshape(pairs, 16, 16)


@pytest.mark.parametrize("order", ["consecutive", "reversed"])
def test_chained_tile_pairs_are_exact(rng, order):
    """Consecutive sub-buffers are computed together, others run by run: both exactly."""
    pairs = 24
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    with rig(TILE16) as r:
        runs = range(pairs) if order == "consecutive" else range(pairs - 1, -1, -1)
        chain, _, bo_in, bo_out = tile_chain(r, pairs, list(runs))
        pack_pairs(bo_in, a, b)
        for _ in range(2):  # and again, with the checks and plans the runs kept
            chain.execute()
            assert chain.wait() is None
            out = tile_outputs(bo_out, pairs)
            for i in range(pairs):
                np.testing.assert_array_equal(out[i], reference.tile16_kernel(a[i], b[i]))


@pytest.mark.parametrize("order", ["consecutive", "reversed"])
def test_chained_gemm_runs_on_sub_buffers_are_exact(rng, order, monkeypatch):
    """Gemm runs on consecutive sub-buffers of one A, B and C BO (as a shared slot lays
    them out) are computed in one stacked product, others run by run: both exactly."""
    from npu_pipeline.emulator import _queue

    runs, (m, k, n) = 5, BLOCK
    a, b = random_int8(rng, (runs, m, k)), random_int8(rng, (runs, k, n))
    stacked = []
    compute = _queue.product_of_runs
    monkeypatch.setattr(
        _queue, "product_of_runs", lambda *args: stacked.append(1) or compute(*args)
    )
    with rig() as r:
        instr = r.instr(BLOCK)
        bo_a, bo_b = r.data(3, a.nbytes, a), r.data(4, b.nbytes, b)
        bo_c = r.data(5, runs * m * n * 4)
        chain = xrt.runlist(r.ctx)
        for i in range(runs) if order == "consecutive" else range(runs - 1, -1, -1):
            run = xrt.run(r.kernel)
            subs = (
                xrt.bo(bo_a, m * k, m * k * i),
                xrt.bo(bo_b, k * n, k * n * i),
                xrt.bo(bo_c, m * n * 4, m * n * 4 * i),
            )
            for j, value in enumerate((3, *instr, *subs)):
                run.set_arg(j, value)
            chain.add(run)
        chain.execute()
        assert chain.wait() is None
        c = read_c(bo_c, runs * m, n).reshape(runs, m, n)
    assert len(stacked) == (1 if order == "consecutive" else 0)
    for i in range(runs):
        np.testing.assert_array_equal(c[i], a[i].astype(np.int64) @ b[i].astype(np.int64))


def assert_chain_stopped_at(members, bo_out, a, b, *, failed, unwritten_from):
    """Runs before ``failed`` completed exactly (their states left NEW, as XRT leaves
    them), it ended in ERROR, the rest aborted."""
    states = [run.state() for run in members]
    assert states == (
        [S.ERT_CMD_STATE_NEW] * failed
        + [S.ERT_CMD_STATE_ERROR]
        + [S.ERT_CMD_STATE_ABORT] * (len(members) - failed - 1)
    )
    out = tile_outputs(bo_out, len(members))
    for i in range(failed):
        np.testing.assert_array_equal(out[i], reference.tile16_kernel(a[i], b[i]))
    assert not out[unwritten_from:].any()


def test_failed_run_in_a_chain_of_tile_pairs_stops_it_there(rng):
    """Runs before the failed one complete, it fails, the rest abort: no output written."""
    pairs = 12
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    with rig(TILE16, faults=[xrt.Fault(xrt.FaultKind.ERROR, run_index=5)]) as r:
        chain, members, bo_in, bo_out = tile_chain(r, pairs)
        pack_pairs(bo_in, a, b)
        chain.execute()
        with pytest.raises(DeviceError, match=FAILED_CHAIN.format(state="ERROR", run=5)):
            chain.wait()
        # An injected ERROR writes no output, so nothing from run 5 on is written.
        assert_chain_stopped_at(members, bo_out, a, b, failed=5, unwritten_from=5)


def test_mapped_write_during_a_chain_of_tile_pairs_is_caught(rng, monkeypatch):
    """A write into run 3's input while the chain computes: runs 0-2 complete, run 3
    ends in ERROR (wait raises the hazard), the rest abort with no output written."""
    from npu_pipeline.emulator import _queue

    pairs = 8
    a, b = random_int8(rng, (pairs, 16, 16)), random_int8(rng, (pairs, 16, 16))
    with rig(TILE16) as r:
        chain, members, bo_in, bo_out = tile_chain(r, pairs)
        pack_pairs(bo_in, a, b)
        view = np.frombuffer(bo_in.map(), dtype=np.uint8)
        compute = _queue.product_of_runs

        def host_writes_meanwhile(*args):
            view[3 * 512] ^= 1  # the host packing into a run still in flight
            monkeypatch.setattr(_queue, "product_of_runs", compute)
            return compute(*args)

        monkeypatch.setattr(_queue, "product_of_runs", host_writes_meanwhile)
        chain.execute()
        with pytest.raises(BufferHazardError, match=r"run #3 .*map\(\) view"):
            chain.wait()
        # The hazard is seen after run 3 computed: only the runs after it are unwritten.
        assert_chain_stopped_at(members, bo_out, a, b, failed=3, unwritten_from=4)


# -- cleanup ----------------------------------------------------------------------


def test_close_aborts_queued_runs_and_joins_threads(rng):
    a, b = operands(rng)
    with rig(timing=slow(5.0)) as r:  # closing wakes the sleeping run at once
        instr = r.instr(BLOCK)
        runs = [gemm_run(r, a, b, instr=instr)[0] for _ in range(3)]
        assert xrt.live_device_threads() == 1
        r.ctx.close()
        assert xrt.live_device_threads() == 0
        assert {run.wait() for run in runs} == {S.ERT_CMD_STATE_ABORT}
        with pytest.raises(DriverRuleError, match="closed hw_context"):
            gemm_run(r, a, b, instr=instr)


def test_garbage_collected_context_stops_its_thread(rng):
    a, b = operands(rng)
    with rig() as r:
        gemm_run(r, a, b)[0].wait()
        ctx = xrt.hw_context(r.dev, r.ctx.get_xclbin_uuid())
        assert xrt.live_device_threads() == 2
        del ctx
        assert xrt.live_device_threads() == 1
