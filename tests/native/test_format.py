"""The checkpoint reader: round trips through the tests' own writer, and every malformed file
rejected with a message that names the file and the problem."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from gpt_simple_core.errors import CheckpointError
from gpt_simple_native.format import read_header, read_weights
from tests.native.hipgpt_writer import LAYER_ORDER, TinyHipGPT, random_model

# Small, but with an odd layer count, H != 4 and F unrelated to E.
SMALL = {"V": 11, "S": 5, "E": 12, "L": 3, "H": 3, "F": 20}


@pytest.fixture
def small() -> TinyHipGPT:
    return random_model(**SMALL)


def test_fixture_header(native_reference: Path) -> None:
    dims = read_header(native_reference / "gpt_checkpoint.bin")
    assert dims.as_config() == {"V": 1000, "S": 32, "E": 128, "L": 2, "H": 4, "F": 256}
    assert dims.file_size == (native_reference / "gpt_checkpoint.bin").stat().st_size


def test_round_trip(tmp_path: Path, small: TinyHipGPT) -> None:
    path = small.write(tmp_path / "odd.bin")
    weights = read_weights(path)
    assert weights.dims.as_config() == SMALL
    assert weights.dims.file_size == path.stat().st_size
    assert weights.dims.param_count * 4 + 16 + 12 * small.L == path.stat().st_size
    np.testing.assert_array_equal(weights.token_embedding, small.token_embedding)
    np.testing.assert_array_equal(weights.position_embedding, small.position_embedding)
    np.testing.assert_array_equal(weights.w_out, small.w_out)
    assert len(weights.layers) == small.L
    for read, written in zip(weights.layers, small.layers, strict=True):
        for name in LAYER_ORDER:
            np.testing.assert_array_equal(getattr(read, name), written[name], err_msg=name)
            assert getattr(read, name).dtype == np.float32


def _rejects(path: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    with pytest.raises(CheckpointError):
        read_weights(path)


def test_truncated(tmp_path: Path, small: TinyHipGPT) -> None:
    data = small.to_bytes()
    path = tmp_path / "short.bin"
    path.write_bytes(data[:-1])
    _rejects(path, "truncated", f"needs {len(data):,} bytes", "1 missing")


def test_truncated_inside_the_layers(tmp_path: Path, small: TinyHipGPT) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(small.to_bytes()[: small.layer_header_offset(1) + 5])
    _rejects(path, "truncated")


def test_truncated_before_the_first_layer(tmp_path: Path, small: TinyHipGPT) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(small.to_bytes()[:100])
    _rejects(path, "truncated", "layer 0")


def test_shorter_than_the_header(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bin"
    path.write_bytes(b"\x01\x00\x00\x00" * 3)
    _rejects(path, "12 bytes", "header")


def test_trailing_bytes(tmp_path: Path, small: TinyHipGPT) -> None:
    path = tmp_path / "long.bin"
    path.write_bytes(small.to_bytes() + b"\0\0\0")
    _rejects(path, "3 trailing bytes")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ((-5, 32, 128, 2), "V (vocab size) = -5"),
        ((1000, 0, 128, 2), "S (context length) = 0"),
        ((1000, 32, 128, 0), "L (layer count) = 0"),
        ((1000, 1 << 20, 128, 2), "S (context length) = 1048576"),
        ((1 << 24, 32, 1 << 16, 2), "implies a file of at least"),
    ],
)
def test_absurd_dimensions_allocate_nothing(
    tmp_path: Path, header: tuple[int, ...], fragment: str
) -> None:
    path = tmp_path / "absurd.bin"
    path.write_bytes(struct.pack("<4i", *header) + bytes(64))
    tracemalloc.start()
    try:
        _rejects(path, fragment)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_layer_e_differs_from_header(tmp_path: Path, small: TinyHipGPT) -> None:
    small.layer_headers = [(12, 3, 20), (12, 3, 20), (16, 3, 20)]
    _rejects(small.write(tmp_path / "e.bin"), "layer 2 stores E=16", "header says E=12")


def test_first_layer_e_differs_from_header(tmp_path: Path, small: TinyHipGPT) -> None:
    small.layer_headers = [(24, 3, 20)] * 3
    _rejects(small.write(tmp_path / "e.bin"), "layer 0 stores E=24")


def test_e_not_divisible_by_h(tmp_path: Path) -> None:
    model = random_model(**{**SMALL, "H": 5})
    _rejects(model.write(tmp_path / "h.bin"), "E=12 is not divisible by H=5")


def test_heads_differ_between_layers(tmp_path: Path, small: TinyHipGPT) -> None:
    small.layer_headers = [(12, 3, 20), (12, 4, 20), (12, 3, 20)]
    _rejects(small.write(tmp_path / "h.bin"), "layer 1 stores H=4, F=20", "layer 0 has H=3")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_header(tmp_path / "absent.bin")
