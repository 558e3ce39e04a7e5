"""npu_pipeline: pipelined, asynchronous INT8 matmul for AMD Ryzen AI NPUs.

See README.md for the two commands that set everything up, and docs/ for the
architecture. The public names are re-exported here.
"""

from npu_pipeline.contract import KernelContract, available_contracts, load_contract
from npu_pipeline.errors import (
    BufferHazardError,
    ContractError,
    DeviceError,
    DriverRuleError,
    DTypeError,
    NpuPipelineError,
    PipelineClosedError,
    PlanError,
    QuantizationError,
    ShapeError,
)
from npu_pipeline.reference import Rounding, Saturation

__version__ = "0.1.0"

__all__ = [
    "BufferHazardError",
    "ContractError",
    "DTypeError",
    "DeviceError",
    "DriverRuleError",
    "KernelContract",
    "NpuPipelineError",
    "PipelineClosedError",
    "PlanError",
    "QuantizationError",
    "Rounding",
    "Saturation",
    "ShapeError",
    "__version__",
    "available_contracts",
    "load_contract",
]
