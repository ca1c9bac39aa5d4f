"""RLE text of label maps: round trip, the official regex, malformed input."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import densemllm
from densemllm.parse import RLE_PATTERN

OFFICIAL = re.compile(RLE_PATTERN)


def official_decode(text, n):
    """The official parser: findall over the regex, expand, then a length check."""
    out = []
    for v, c in OFFICIAL.findall(text):
        out.extend([int(v)] * int(c))
    if len(out) != n:
        raise ValueError("length mismatch")
    return np.array(out, dtype=np.int64)


def reference_encode(flat):
    pairs, i = [], 0
    while i < len(flat):
        j = i
        while j < len(flat) and flat[j] == flat[i]:
            j += 1
        pairs.append(f"({int(flat[i])},{j - i})")
        i = j
    return "".join(pairs)


maps = hnp.arrays(np.int32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=12),
                  elements=st.one_of(st.integers(0, 3), st.integers(0, 2**31 - 1)))


@settings(max_examples=200, deadline=None)
@given(maps)
def test_round_trip_and_reference_encoding(a):
    text = densemllm.rle_encode(a)
    assert text == reference_encode(a.ravel())
    back = densemllm.rle_decode(text, a.shape)
    assert back.dtype == np.int32 and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    np.testing.assert_array_equal(official_decode(text, a.size), a.ravel())


# Text built from pair-like fragments and junk, so findall's skipping is exercised.
fragments = st.sampled_from(["(", ")", ",", " ", "\t", "\n", "\x1c", "1", "0", "7", "12", "a", "<",
                             "mask>", "(1,2)", "( 3 , 1 )", "(0,0)", "((", "(2,", ",1)", "(-1,2)"])


@settings(max_examples=300, deadline=None)
@given(st.lists(fragments, max_size=30), st.integers(0, 40))
def test_decode_matches_official_findall(parts, n):
    text = "".join(parts)
    try:
        want = official_decode(text, n)
    except ValueError:
        want = None
    if want is None or (want.size and want.max() > 2**31 - 1):
        with pytest.raises(ValueError):
            densemllm.rle_decode(text, n)
    else:
        np.testing.assert_array_equal(densemllm.rle_decode(text, n), want)


def test_junk_between_pairs_is_ignored_like_findall():
    text = "xx(1,2) junk (0, 3)( 2 ,1 )tail"
    np.testing.assert_array_equal(densemllm.rle_decode(text, 6), [1, 1, 0, 0, 0, 2])
    np.testing.assert_array_equal(official_decode(text, 6), [1, 1, 0, 0, 0, 2])
    # a broken pair is skipped, the one inside it still counts (findall restarts at "(")
    np.testing.assert_array_equal(densemllm.rle_decode("((4,1)(-1,2)(5,1", 1), [4])


def test_bytes_and_leading_zeros():
    np.testing.assert_array_equal(densemllm.rle_decode(b"(007,002)", (1, 2)), [[7, 7]])


@pytest.mark.parametrize("text,n,msg", [
    ("(1,2)", 3, "cover 2 elements"),
    ("(1,2)(0,5)", 3, "more than"),
    ("(1,99999999999999999999999999)", 3, "more than"),
    ("(2147483648,1)", 1, "int32"),
    ("(99999999999999999999999,1)", 1, "int32"),
    ("", 1, "cover 0"),
    ("no pairs at all", 2, "cover 0"),
])
def test_malformed_raises_value_error(text, n, msg):
    with pytest.raises(ValueError, match=msg):
        densemllm.rle_decode(text, n)


def test_empty_map_and_bad_arguments():
    assert densemllm.rle_encode(np.zeros((0, 3), np.int32)) == ""
    assert densemllm.rle_decode("", (0, 3)).shape == (0, 3)
    with pytest.raises(ValueError, match="negative"):
        densemllm.rle_encode(np.array([1, -1], np.int32))
    with pytest.raises(ValueError, match="must lie in"):
        densemllm.rle_encode(np.array([1, -1], np.int64))
    with pytest.raises(ValueError):
        densemllm.rle_encode(np.array([2**31], np.int64))
    with pytest.raises(TypeError):
        densemllm.rle_encode(np.array([0.5]))
    with pytest.raises(TypeError):
        densemllm.rle_decode(123, 3)
    with pytest.raises(ValueError):
        densemllm.rle_decode("(1,1)", (-1,))
    # bool maps encode as 0/1, non-contiguous views are handled
    assert densemllm.rle_encode(np.array([[True, True], [False, True]])) == "(1,2)(0,1)(1,1)"
    a = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]
    assert densemllm.rle_decode(densemllm.rle_encode(a), a.shape).tolist() == a.tolist()
