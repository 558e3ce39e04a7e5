"""npu_pipeline: pipelined, asynchronous INT8 matmul for AMD Ryzen AI NPUs.

See README.md for the two commands that set everything up, and docs/ for the
architecture. The public names are re-exported here.
"""

from npu_pipeline.contract import KernelContract, available_contracts, load_contract
from npu_pipeline.errors import (
    AudioError,
    BufferHazardError,
    ContractError,
    DependencyError,
    DeviceError,
    DriverRuleError,
    DTypeError,
    ModelError,
    NpuPipelineError,
    OptionError,
    PipelineClosedError,
    PlanError,
    ProfileError,
    QuantizationError,
    ShapeError,
    TimelineError,
    UsageError,
)
from npu_pipeline.pipeline import Pipeline, open_pipeline
from npu_pipeline.planner import Batch, Estimate, Plan, plan_batches
from npu_pipeline.profile_lookup import get_profile
from npu_pipeline.profiles import DeviceProfile
from npu_pipeline.quant import QuantizedTensor, dequantize, dequantize_matmul, quantize_symmetric
from npu_pipeline.reference import Rounding, Saturation
from npu_pipeline.timeline import Span, Timeline, TimelineSummary

__version__ = "0.1.0"
"""The package version (PEP 440), the same string as ``version`` in pyproject.toml."""

__all__ = [
    "AudioError",
    "Batch",
    "BufferHazardError",
    "ContractError",
    "DTypeError",
    "DependencyError",
    "DeviceError",
    "DeviceProfile",
    "DriverRuleError",
    "Estimate",
    "KernelContract",
    "ModelError",
    "NpuPipelineError",
    "OptionError",
    "Pipeline",
    "PipelineClosedError",
    "Plan",
    "PlanError",
    "ProfileError",
    "QuantizationError",
    "QuantizedTensor",
    "Rounding",
    "Saturation",
    "ShapeError",
    "Span",
    "Timeline",
    "TimelineError",
    "TimelineSummary",
    "UsageError",
    "__version__",
    "available_contracts",
    "dequantize",
    "dequantize_matmul",
    "get_profile",
    "load_contract",
    "open_pipeline",
    "plan_batches",
    "quantize_symmetric",
]
