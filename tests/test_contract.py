"""Kernel contracts: shipped contracts load, every malformed field is named."""

import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from npu_pipeline.contract import (
    CORE_DATA_MEMORY_BYTES,
    available_contracts,
    load_contract,
    parse_contract,
)
from npu_pipeline.errors import ContractError
from npu_pipeline.reference import Rounding, Saturation


def raw(name="gemm_i8_i32"):
    return json.loads(Path(load_contract(name).source).read_text())


def test_shipped_contracts_load():
    assert available_contracts() == ["gemm_i8_i32", "tile16_legacy"]
    gemm = load_contract("gemm_i8_i32")
    assert gemm.semantic == "block_gemm"
    assert gemm.opcode == 3
    assert gemm.instr_group_id == 1
    assert [(b.name, b.group_id, b.dtype) for b in gemm.buffers] == [
        ("a", 3, "int8"),
        ("b", 4, "int8"),
        ("c", 5, "int32"),
    ]
    assert gemm.target("npu1").micro_tile == (4, 8, 8)
    assert gemm.target("npu1").block_granularity == (256, 64, 256)
    assert gemm.target("npu2").micro_tile == (8, 8, 8)
    assert gemm.run_buffer_bytes((64, 32, 16)) == {"a": 64 * 32, "b": 32 * 16, "c": 64 * 16 * 4}
    legacy = load_contract("tile16_legacy")
    assert legacy.run_buffer_bytes((16, 16, 16)) == {"in": 512, "out": 256}
    assert legacy.output.shift == 7
    assert legacy.output.rounding is Rounding.FLOOR
    assert legacy.output.saturation is Saturation.SATURATE


def test_load_by_path_and_folder(tmp_path):
    source = load_contract("gemm_i8_i32").source
    folder = tmp_path / "mybuild"
    folder.mkdir()
    (folder / "kernel.json").write_text(Path(source).read_text())
    assert load_contract(str(folder)).name == "gemm_i8_i32"
    assert load_contract(str(folder / "kernel.json")).layout == "row_major"


def test_unknown_contract_names_the_choices():
    with pytest.raises(ContractError, match="gemm_i8_i32, tile16_legacy"):
        load_contract("no_such_kernel")


@pytest.mark.parametrize("field", ["name", "opcode", "buffers", "targets", "output", "layout"])
def test_missing_field_is_named(field):
    data = raw()
    del data[field]
    with pytest.raises(ContractError, match=f"'{field}' is missing"):
        parse_contract(data)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("opcode",), "3", "'opcode' is '3'"),
        (("opcode",), True, "'opcode' is True"),
        (("layout",), "column_major", "'layout' is 'column_major'"),
        (("semantic",), "conv", "'semantic' is 'conv'"),
        (("buffers", 0, "dtype"), "float32", "'dtype' is 'float32'"),
        (("buffers", 1, "group_id"), 3, "group ids .* repeat"),
        (("output", "rounding"), "nearest", "output"),
        (("targets", "npu1", "micro_tile"), [4, 8], "micro_tile"),
        (("targets", "npu1", "max_block"), [2048, 4096, 2047], "off the grid"),
        (("targets", "npu1", "block_granularity"), [256, 60, 256], "off the grid"),
        (("targets", "npu1", "core_tile"), [128, 128, 64], "core data memory"),
        (("targets", "npu1", "max_block"), [8192, 4096, 2048], "row repeats"),
        (("arguments",), ["opcode", "instr", "a", "b", "c"], "'arguments'"),
    ],
)
def test_bad_field_is_named(path, value, match):
    data = copy.deepcopy(raw())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ContractError, match=match):
        parse_contract(data)


def test_core_memory_rule_matches_npu_facts():
    # About 48 KB at m=k=n=64 for i8 in, i32 out, double buffered
    # (docs/hardware-facts.md#on-chip-memory-and-shim-dma-limits).
    spec = load_contract("gemm_i8_i32").target("npu1")
    assert spec.core_memory_bytes(1, 4) == 48 * 1024
    assert spec.core_memory_bytes(1, 4) <= CORE_DATA_MEMORY_BYTES


def test_check_block():
    gemm = load_contract("gemm_i8_i32")
    gemm.check_block((256, 64, 256), "npu1")
    gemm.check_block((1536, 512, 2048), "npu1")
    with pytest.raises(ContractError, match="multiple of 256"):
        gemm.check_block((1500, 512, 2048), "npu1")
    with pytest.raises(ContractError, match="multiple of 512"):
        gemm.check_block((256, 64, 256), "npu2")
    with pytest.raises(ContractError, match="between 256 and 2048"):
        gemm.check_block((256, 64, 4096), "npu1")
    with pytest.raises(ContractError, match="no build for NPU generation 'npu9'"):
        gemm.check_block((256, 64, 256), "npu9")


def test_wheel_ships_contracts(tmp_path):
    """A non-editable install must find the contracts: they are inside the wheel."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        check=True,
        cwd=Path(__file__).resolve().parent.parent,  # the source tree, installed or not
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for contract in available_contracts():
        assert f"npu_pipeline/kernels/{contract}/kernel.json" in names
