"""Write the committed seed corpus of the C fuzz targets (tests/fuzz/corpus/<target>/).

Run from the repository root: python tests/fuzz/make_seeds.py. Small valid inputs and a
few near-misses of each grammar; the fuzzer mutates from these."""
import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "corpus"


def safetensors(header, data=b"", pad=True):
    raw = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def write(target, name, blob):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(blob)


def main():
    f32 = struct.pack("<4f", 1, 2, 3, 4)
    bf16 = struct.pack("<4H", 0x3F80, 0x4000, 0x4040, 0x4080)
    one = {"__metadata__": {"format": "pt"},
           "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
           "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]}}
    st = {
        "valid_two_tensors": safetensors(one, f32 + bf16),
        "valid_empty": safetensors({}),
        "valid_scalar_f16": safetensors({"s": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}},
                                        b"\x00\x3c"),
        "valid_zero_dim": safetensors({"z": {"dtype": "I64", "shape": [0, 3], "data_offsets": [0, 0]}}),
        "all_dtypes": safetensors({f"t{k}": {"dtype": d, "shape": [1], "data_offsets": [8 * k, 8 * k + s]}
                                   for k, (d, s) in enumerate([("F64", 8), ("I8", 1), ("U8", 1), ("I16", 2),
                                                               ("U16", 2), ("I32", 4), ("U32", 4), ("U64", 8),
                                                               ("BOOL", 1)])}, bytes(72)),
        "overlap": safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
        "bad_offsets": safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 99]}}, f32),
        "huge_shape": safetensors({"a": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 16]}}, f32),
        "unknown_dtype": safetensors({"a": {"dtype": "F8", "shape": [4], "data_offsets": [0, 4]}}, f32),
        "truncated": safetensors(one, f32)[:-3],
        "header_len_too_big": (10**9).to_bytes(8, "little") + b"{}",
        "misaligned": safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}}, bytes(8)),
    }
    for k, v in st.items():
        write("safetensors", k, v)
    # Two files (first byte 0xFF, u16 split offset): valid pair and a duplicate name.
    a = safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, f32)
    b = safetensors({"b": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, bf16)
    write("safetensors", "two_files", b"\xff" + len(a).to_bytes(2, "little") + a + b)
    write("safetensors", "two_files_duplicate", b"\xff" + len(a).to_bytes(2, "little") + a + a)

    js = {
        "object": json.dumps(one).encode(),
        "escapes": b'{"k\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/":{"dtype":"F32","shape":[],"data_offsets":[0,0]}}',
        "numbers": b'{"__metadata__":{"a":"1"},"x":{"dtype":"U8","shape":[0,1e3,-0,1.5,12345678901234567890123],'
                   b'"data_offsets":[0,0]}}',
        "literals": b'{"__metadata__":{"t":"true"},"y":{"dtype":"BOOL","shape":[0],"data_offsets":[0,0],'
                    b'"extra":[true,false,null,{}]}}',
        "nested": b'{"a":' + b'[' * 70 + b']' * 70 + b'}',
        "utf8": '{"名前":{"dtype":"I8","shape":[0],"data_offsets":[0,0]}}'.encode(),
        "bad_utf8": b'{"\xc0\xaf":{}}',
        "lone_surrogate": b'{"\\udc00":{}}',
        "trailing": b'{} x',
        "whitespace": b' \t\r\n{ } \n   ',
    }
    for k, v in js.items():
        write("json", k, v)

    def rle(n, text):
        return n.to_bytes(2, "little") + text

    rl = {
        "simple": rle(6, b"(0,2)(3,4)"),
        "spaces": rle(5, b"junk ( 1 ,\t2 )x(\x1c7,3\n)"),
        "big_value": rle(1, b"(2147483647,1)"),
        "too_big": rle(1, b"(2147483648,1)"),
        "overflow": rle(3, b"(1,99999999999999999999999)"),
        "short": rle(10, b"(0,3)"),
        "empty": rle(0, b""),
        "ints": rle(0, struct.pack("<6i", 0, 0, 5, 5, 5, 1)),
        "negative_int": rle(0, struct.pack("<2i", 1, -1)),
    }
    for k, v in rl.items():
        write("rle", k, v)


if __name__ == "__main__":
    main()
