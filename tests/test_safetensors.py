"""The C safetensors reader: round trips against the `safetensors` package, zero-copy
views, conversions, and hostile files (each must raise a clear exception naming the
file and tensor, never crash)."""
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save
from safetensors.torch import save_file as torch_save

from densemllm import CheckpointError
from densemllm._core import Checkpoint


def raw_file(path, header, data=b"", *, pad=True, hlen=None):
    """A safetensors file from a header (dict or raw bytes) and data bytes."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:  # writers pad the header with spaces to 8 bytes
        h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h) if hlen is None else hlen) + h + data)
    return str(path)


def entry(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def expect_error(path, *needles, exc=CheckpointError):
    with pytest.raises(exc) as ei:
        Checkpoint([path])
    msg = str(ei.value)
    for n in (str(path),) + needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


# -- round trips ---------------------------------------------------------------

def test_roundtrip_all_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f16": rng.standard_normal((3, 5)).astype(np.float16),
        "f32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "f64": rng.standard_normal(7),
        "i8": rng.integers(-128, 127, (4, 4), dtype=np.int8),
        "u8": rng.integers(0, 255, 9, dtype=np.uint8),
        "i16": rng.integers(-1000, 1000, 5, dtype=np.int16),
        "u16": rng.integers(0, 60000, 5, dtype=np.uint16),
        "i32": rng.integers(-10**9, 10**9, (2, 2), dtype=np.int32),
        "u32": rng.integers(0, 4 * 10**9, 3, dtype=np.uint32),
        "i64": rng.integers(-10**18, 10**18, 3, dtype=np.int64),
        "u64": rng.integers(0, 2**63, 3, dtype=np.uint64),
        "bool": rng.integers(0, 2, (3, 3)).astype(bool),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    f = tmp_path / "a.safetensors"
    np_save(arrays, str(f), metadata={"format": "np", "note": "x"})
    c = Checkpoint([str(f)])
    assert len(c) == len(arrays)
    assert c.names() == sorted(arrays)
    for name, a in arrays.items():
        got = c.get(name)
        assert got.dtype == a.dtype and got.shape == a.shape, name
        np.testing.assert_array_equal(got, a)
        dtype, shape, file = c.info(name)
        assert shape == a.shape and file == str(f)
    assert c.info("u8")[0] == "U8" and c.info("bool")[0] == "BOOL" and c.info("f16")[0] == "F16"
    assert "f32" in c and "nope" not in c and 3 not in c
    with pytest.raises(KeyError, match="nope"):
        c.get("nope")
    with pytest.raises(TypeError):
        c.get(3)


def test_bf16_zero_copy_views(tmp_path):
    """bf16 stays bf16 (uint16 bits) and arrays point straight into the mapping."""
    t = {"a": torch.randn(4, 8).to(torch.bfloat16), "b": torch.randn(16, 8).to(torch.bfloat16)}
    f = tmp_path / "m.safetensors"
    torch_save(t, str(f))
    c = Checkpoint([str(f)])
    a, b = c.get("a"), c.get("b")
    assert a.dtype == np.uint16 and c.info("a")[0] == "BF16"
    np.testing.assert_array_equal(a, t["a"].view(torch.int16).numpy().view(np.uint16))
    # The array is a read-only view owned by the Checkpoint, not a copy.
    assert a.base is c and not a.flags.writeable and not a.flags.owndata
    with pytest.raises(ValueError):
        a[0, 0] = 1
    # Two views of the same tensor share memory; tensors sit at their file offsets.
    assert np.shares_memory(a, c.get("a"))
    hdr = json.loads(f.read_bytes()[8:8 + struct.unpack("<Q", f.read_bytes()[:8])[0]])
    addr = lambda x: x.__array_interface__["data"][0]  # noqa: E731
    assert addr(b) - addr(a) == hdr["b"]["data_offsets"][0] - hdr["a"]["data_offsets"][0]
    # ... inside a mapping of that very file (evidence from the kernel, not from us).
    maps = open("/proc/self/maps").read().splitlines()
    owners = [ln.split(None, 5)[-1] for ln in maps
              if int(ln.split("-")[0], 16) <= addr(a) < int(ln.split()[0].split("-")[1], 16)]
    assert owners == [str(f)]
    # The view keeps the checkpoint alive after the last direct reference goes.
    del c
    np.testing.assert_array_equal(a, t["a"].view(torch.int16).numpy().view(np.uint16))


def test_shards_merge_and_duplicates(tmp_path):
    f1, f2 = tmp_path / "s1.safetensors", tmp_path / "s2.safetensors"
    np_save({"x": np.ones(3, np.float32)}, str(f1))
    np_save({"y": np.zeros(2, np.float32)}, str(f2))
    c = Checkpoint([str(f1), str(f2)])
    assert c.names() == ["x", "y"] and c.info("y")[2] == str(f2) and c.files() == [str(f1), str(f2)]
    np_save({"x": np.zeros(3, np.float32)}, str(f2))
    with pytest.raises(CheckpointError) as ei:
        Checkpoint([str(f1), str(f2)])
    assert "duplicate tensor name 'x'" in str(ei.value) and str(f1) in str(ei.value) and str(f2) in str(ei.value)


def test_widen_and_narrow_match_torch(tmp_path):
    t = {"b": torch.randn(5, 7).to(torch.bfloat16), "h": torch.randn(3, 3).to(torch.float16),
         "f": torch.randn(6, 5) * 100, "i": torch.arange(4, dtype=torch.int32)}
    # Values that exercise round-to-nearest-even and specials in f32 -> bf16.
    t["f"][0, :5] = torch.tensor([1.00390625, 1.01171875, float("inf"), -0.0, 3.0e38])
    f = tmp_path / "m.safetensors"
    torch_save(t, str(f))
    c = Checkpoint([str(f)])
    c.widen_f32()
    assert c.info("b")[0] == "F32" and c.info("h")[0] == "F32" and c.info("i")[0] == "I32"
    np.testing.assert_array_equal(c.get("b"), t["b"].float().numpy())  # exact: bf16 -> f32 is exact
    np.testing.assert_array_equal(c.get("h"), t["h"].float().numpy())
    with pytest.raises(ValueError, match="already converted"):
        c.narrow_bf16()
    c2 = Checkpoint([str(f)])
    c2.narrow_bf16()
    assert c2.info("f")[0] == "BF16" and c2.info("b")[0] == "BF16"
    bits = lambda x: x.view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    np.testing.assert_array_equal(c2.get("f"), bits(t["f"].to(torch.bfloat16)))
    np.testing.assert_array_equal(c2.get("h"), bits(t["h"].float().to(torch.bfloat16)))
    np.testing.assert_array_equal(c2.get("b"), bits(t["b"]))  # untouched, still the mapping


def test_find_weight_prefixes_and_shape(tmp_path):
    f = tmp_path / "m.safetensors"
    np_save({"vision_model.w": np.ones((2, 3), np.float32), "model.x": np.ones(4, np.float32)}, str(f))
    c = Checkpoint([str(f)])
    w = c.find_weight(["siglip2.vision_model.", "vision_model."], "w", [2, 3])
    assert np.shares_memory(w, c.get("vision_model.w"))
    assert c.find_weight([], "model.x", [4]).shape == (4,)
    with pytest.raises(ValueError) as ei:
        c.find_weight(["siglip2.vision_model.", "vision_model."], "w", [3, 2])
    assert "vision_model.w" in str(ei.value) and "[3, 2]" in str(ei.value) and "[2, 3]" in str(ei.value)
    with pytest.raises(ValueError) as ei:
        c.find_weight(["a.", "b."], "w", [2, 3])
    assert "'a.w'" in str(ei.value) and "'b.w'" in str(ei.value)


def test_constructor_arguments(tmp_path):
    with pytest.raises(TypeError):
        Checkpoint("model.safetensors")  # a str is not a list of paths
    with pytest.raises(ValueError):
        Checkpoint([])
    with pytest.raises(TypeError):
        Checkpoint([3])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Checkpoint([str(tmp_path / "missing.safetensors")])
    with pytest.raises(CheckpointError, match="not a regular file"):
        Checkpoint([str(tmp_path)])


# -- hostile files -----------------------------------------------------------------

def test_truncated_file(tmp_path):
    f = tmp_path / "t.safetensors"
    f.write_bytes(b"\x10\x00\x00")
    expect_error(f, "truncated")
    f.write_bytes(b"")
    expect_error(f, "truncated")


def test_truncated_data(tmp_path):
    f = tmp_path / "t.safetensors"
    np_save({"w": np.ones((4, 4), np.float32)}, str(f))
    f.write_bytes(f.read_bytes()[:-10])
    expect_error(f, "'w'", "out of range")


def test_header_length_larger_than_file(tmp_path):
    f = tmp_path / "t.safetensors"
    raw_file(f, {}, hlen=1000)
    expect_error(f, "header length 1000 is larger than the file")


def test_huge_header_length(tmp_path):
    f = tmp_path / "t.safetensors"
    raw_file(f, {}, hlen=2**63 + 5)
    expect_error(f, "header length")
    # A header length within the file but past the cap: a sparse 120 MB file costs no disk.
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", 110 * 2**20))
        fh.truncate(120 * 2**20)
    expect_error(f, "exceeds the", "cap")


@pytest.mark.parametrize("text, why", [
    (b'{"a": ', "unexpected end"),
    (b'{"a": 1,}', "expected a string key"),
    (b"{'a': 1}", "expected a string key"),
    (b'{"a" 1}', "expected ':'"),
    (b'{"a": NaN}', "unexpected character"),
    (b'{"a": 01}', "expected ',' or '}'"),
    (b'{"a": 1.}', "bad number"),
    (b'{"a": "\\x"}', "bad escape"),
    (b'{"a": "\\ud800"}', "surrogate"),
    (b'{"a": "\\u12"}', "escape"),
    (b'{"a": "x\x01"}', "control character"),
    (b'{"a": "\xff"}', "invalid UTF-8"),
    (b'{"a": "\xc0\xaf"}', "invalid UTF-8"),
    (b'{"a": tru}', "unexpected token"),
    (b'{"a": 1} {', "trailing data"),
    (b'{"a": "abc', "unterminated string"),
    (b'[' * 100 + b']' * 100, "nesting too deep"),
    (b'', "unexpected end"),
    (b'{"a\\u0000b": 1}', "NUL"),
])
def test_invalid_json(tmp_path, text, why):
    f = tmp_path / "t.safetensors"
    raw_file(f, text, pad=False)
    expect_error(f, "not valid JSON", why)


@pytest.mark.parametrize("header, needles", [
    ([1, 2], ["not a JSON object"]),
    ({"w": entry("Q4", [2], 0, 8)}, ["'w'", "unknown dtype Q4"]),
    ({"w": entry(7, [2], 0, 8)}, ["'w'", "unknown dtype"]),
    ({"w": entry("F32", [2], 0, 80)}, ["'w'", "out of range"]),
    ({"w": entry("F32", [2], 8, 0)}, ["'w'", "out of range"]),
    ({"w": entry("F32", [3], 0, 8)}, ["'w'", "8 bytes in the file but shape x F32 needs 12"]),
    ({"w": entry("F32", [-2], 0, 8)}, ["'w'", "shape entry 0"]),
    ({"w": entry("F32", [2.0], 0, 8)}, ["'w'", "shape entry 0"]),
    ({"w": entry("F32", [2**40, 2**40], 0, 8)}, ["'w'", "overflows"]),
    ({"w": entry("F32", [1] * 9, 0, 4)}, ["'w'", "9 dimensions"]),
    ({"w": entry("F32", [2], -1, 8)}, ["'w'", "data_offsets entry 0"]),
    ({"w": {"dtype": "F32", "shape": [2]}}, ["'w'", "missing 'data_offsets'"]),
    ({"w": {**entry("F32", [2], 0, 8), "extra": 1}}, ["'w'", "unknown field 'extra'"]),
    ({"w": [1]}, ["'w'", "not a JSON object"]),
    ({"w": entry("F32", [2], 0, 8), "__metadata__": {"k": 1}}, ["__metadata__", "'k'"]),
    ({"w": entry("F32", [2], 0, 8), "v": entry("F32", [1], 4, 8)}, ["'w'", "'v'", "overlap"]),
])
def test_malformed_entries(tmp_path, header, needles):
    f = tmp_path / "t.safetensors"
    raw_file(f, header, bytes(16))
    expect_error(f, *needles)


def test_duplicate_name_in_one_file(tmp_path):
    f = tmp_path / "t.safetensors"
    h = b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
        b'"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    raw_file(f, h, bytes(8))
    expect_error(f, "duplicate tensor name 'w'")


def test_misaligned_data(tmp_path):
    f = tmp_path / "t.safetensors"
    # Header of 8k+2 bytes, unpadded: data starts 2 bytes past an 8-byte boundary.
    h = json.dumps({"w": entry("F32", [1], 0, 4)}).encode()
    h += b" " * ((-len(h) % 8) + 2)
    raw_file(f, h, bytes(4), pad=False)
    expect_error(f, "'w'", "not aligned")
    # The same header with a 1-byte type is fine.
    h2 = json.dumps({"w": entry("U8", [4], 0, 4)}).encode()
    h2 += b" " * ((-len(h2) % 8) + 2)
    raw_file(f, h2, bytes(4), pad=False)
    assert Checkpoint([str(f)]).get("w").tolist() == [0, 0, 0, 0]


def test_metadata_and_escapes_accepted(tmp_path):
    f = tmp_path / "t.safetensors"
    h = {"__metadata__": {"format": "pt", "x": "\u00e9\\\"\n"}, "caf\u00e9.\U0001F600": entry("F32", [], 0, 4),
         "e": entry("F32", [0, 3], 4, 4)}
    raw_file(f, json.dumps(h, ensure_ascii=True).encode(), struct.pack("<f", 2.5))
    c = Checkpoint([str(f)])
    assert c.names() == sorted(["caf\u00e9.\U0001F600", "e"])
    assert float(c.get("caf\u00e9.\U0001F600")) == 2.5 and c.get("e").shape == (0, 3)


# -- fuzzing: any byte-level damage gives a clean load or a CheckpointError --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALID = None


def _valid_bytes():
    global _VALID
    if _VALID is None:
        from safetensors.numpy import save

        _VALID = save({"a.w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(5, np.uint8),
                       "c\u00e9": np.zeros((2, 2), np.float16)}, metadata={"format": "pt"})
    return _VALID


def _load_or_reject(tmp_path, data):
    f = tmp_path / "fuzz.safetensors"
    f.write_bytes(data)
    try:
        c = Checkpoint([str(f)])
    except CheckpointError as e:
        assert str(f) in str(e)
        return
    # Accepted: every tensor must lie inside the file (reading it must not fault).
    for n in c.names():
        a = c.get(n)
        assert a.nbytes <= len(data)
        assert len(a.tobytes()) == a.nbytes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_byte_edits(tmp_path, edits, cut):
    data = bytearray(_valid_bytes())
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    _load_or_reject(tmp_path, bytes(data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps({"t": v}).encode())),
    data=st.binary(max_size=64))
def test_fuzz_headers(tmp_path, header, data):
    h = header + b" " * (-len(header) % 8)
    _load_or_reject(tmp_path, struct.pack("<Q", len(h)) + h + data)
