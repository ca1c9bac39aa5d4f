"""The model's output grammar: refs (with their ids), masks, boxes, detections, polygons."""
import numpy as np
import pytest

from densemllm.parse import (ParseError, parse_boxes, parse_detections, parse_mask,
                             parse_polygons, parse_refs, replace_mask)
from densemllm.results import DepthResult, SegmentResult


class FakeTok:
    ids = {"<ref>": 900, "</ref>": 901}

    def token_to_id(self, t):
        return self.ids.get(t)


SEG = ("The target categories include <ref>sky</ref><ref>road</ref>, numbered sequentially "
       "starting from 0, without the background class.<mask>(0,3)(1,1)</mask>")


def test_refs_text_and_ids():
    refs = parse_refs(SEG)
    assert [r.name for r in refs] == ["sky", "road"] and refs[0].ids is None
    assert SEG[refs[1].start:refs[1].end] == "road"
    gen = [5, 6, 900, 11, 12, 901, 900, 13, 901, 7]
    refs = parse_refs(SEG, gen, FakeTok())
    assert [r.ids for r in refs] == [(11, 12), (13,)]
    with pytest.raises(ParseError, match="groups"):
        parse_refs(SEG, [900, 11, 901], FakeTok())
    with pytest.raises(ParseError, match="nested"):
        parse_refs(SEG, [900, 900, 901, 901], FakeTok())
    with pytest.raises(ParseError, match="unbalanced"):
        parse_refs("<ref>sky</ref><ref>road")
    assert parse_refs("no refs here") == []


def test_mask():
    assert parse_mask(SEG) == "(0,3)(1,1)"
    assert parse_mask("This is the <depth>.<mask>(1,2)(3,4)") == "(1,2)(3,4)"  # cut at max tokens
    assert parse_mask("no mask") is None
    assert replace_mask(SEG, "(9,4)").endswith("<mask>(9,4)</mask>")
    assert replace_mask("x", "(1,1)") == "x<mask>(1,1)</mask>"


def test_boxes_and_detections():
    assert parse_boxes("<box><x_155><y_154><x_221><y_206></box>") == [(155, 154, 221, 206)]
    assert parse_boxes("<box><x_50><y_60><x_10><y_20></box>") == [(10, 20, 50, 60)]
    assert parse_boxes("nothing") == []
    for bad in ["<box><x_1><y_2><x_3></box>", "<box><y_1><x_2><y_3><x_4></box>",
                "<box><x_1><y_2><x_3><y_4>junk</box>", "<box><x_1><y_2><x_3><y_4>"]:
        with pytest.raises(ParseError):
            parse_boxes(bad)
    det = parse_detections("<ref>cat</ref><box><x_1><y_2><x_3><y_4></box><box><x_5><y_6><x_7><y_8></box>"
                           "<ref> dog </ref><box><x_0><y_0><x_9><y_9></box><ref>bird</ref>")
    assert det == [("cat", [(1, 2, 3, 4), (5, 6, 7, 8)]), ("dog", [(0, 0, 9, 9)]), ("bird", [])]


def test_polygons():
    text = ("The segmentation result is <ins><poly><x_468><y_3><x_471><y_46><x_473><y_83></poly>"
            "<poly><x_1><y_1><x_2><y_2><x_3><y_1></poly></ins>.")
    (ins,) = parse_polygons(text)
    assert len(ins) == 2
    np.testing.assert_array_equal(ins[0], [[468, 3], [471, 46], [473, 83]])
    with pytest.raises(ParseError):
        parse_polygons("<ins><poly><x_1><y_1><x_2></poly></ins>")
    with pytest.raises(ParseError):
        parse_polygons("<ins><poly><x_1><y_1><x_2><y_2></poly></ins>")


def test_results_model_text():
    r = SegmentResult(labels=np.array([[0, 0], [0, 1]], np.int32), class_names=["sky", "road"],
                      class_ids=[[1], [2]], text=SEG.replace("(0,3)(1,1)", "stale"))
    assert r.model_text() == SEG
    d = DepthResult(depth=np.zeros((4, 4), np.float32), bins=np.array([[1, 1], [5, 5]], np.int32),
                    text="This is the <depth>.")
    assert d.model_text() == "This is the <depth>.<mask>(1,2)(5,2)</mask>"


# -- fuzzing the output grammar: any text built from its fragments parses or raises ParseError
from hypothesis import given, settings
from hypothesis import strategies as st

FRAGMENTS = ["<ref>", "</ref>", "<box>", "</box>", "<mask>", "</mask>", "<ins>", "</ins>", "<poly>", "</poly>",
             "<x_", "<y_", ">", "<x_12>", "<y_7>", "<x_99999999999999999999>", "<y_-3>", "<BG>", "<FG>",
             "(1,2)", "(", ")", ",", "0", "123", " ", "\n", "sky", "é", "\x00", "<", "</"]
grammar_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=grammar_text, ids=st.lists(st.sampled_from([900, 901, 5, 6]), max_size=20))
def test_grammar_fuzz_never_raises_other_errors(text, ids):
    for parse in (parse_refs, parse_boxes, parse_detections, parse_polygons, parse_mask):
        try:
            parse(text)
        except ParseError:
            pass
    try:
        parse_refs(text, ids, FakeTok())
    except ParseError:
        pass
    out = replace_mask(text, "(0,1)")
    assert parse_mask(out) is not None
    for box in (b for b in _try(parse_boxes, text) or []):
        assert box[0] <= box[2] and box[1] <= box[3]


def _try(f, *a):
    try:
        return f(*a)
    except ParseError:
        return None
