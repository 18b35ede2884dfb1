"""Our json-numpy codec against the installed ``json_numpy`` package, both directions, plus strictness."""

import json

import json_numpy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vla_adp.serve import numpy_json
from vla_adp.serve.numpy_json import NumpyJsonError

rng = np.random.default_rng(0)
SAMPLES = {
    "image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "state_f64": rng.normal(size=8),
    "f32": rng.normal(size=(3, 4)).astype(np.float32),
    "big_endian": rng.normal(size=5).astype(">f4"),
    "i64": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
    "bool": np.array([True, False, True]),
    "f16": np.array([1.5, -2.25], np.float16),
    "complex": np.array([1 + 2j, -3j]),
    "non_contiguous": rng.normal(size=(6, 6))[::2, 1::2],
    "fortran": np.asfortranarray(rng.normal(size=(3, 5))),
    "empty": np.zeros((0, 3), np.float32),
    "zero_dim": np.array(2.5),
    "scalar_f64": np.float64(-0.125),
    "scalar_u8": np.uint8(7),
    "nan_inf": np.array([np.nan, np.inf, -np.inf, -0.0]),
}


def assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()  # bit-exact, NaN payloads included
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_encoding_is_byte_identical_to_json_numpy(name):
    obj = {"x": SAMPLES[name], "nested": [SAMPLES[name], {"y": 1}], "s": "text"}
    assert numpy_json.dumps(obj) == json_numpy.dumps(obj)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_decoding_agrees_both_directions(name):
    obj = {"x": SAMPLES[name], "list": [SAMPLES[name]], "n": 3, "s": "a"}
    assert_same(numpy_json.loads(json_numpy.dumps(obj)), json_numpy.loads(json_numpy.dumps(obj)))
    assert_same(json_numpy.loads(numpy_json.dumps(obj)), numpy_json.loads(numpy_json.dumps(obj)))
    assert_same(numpy_json.loads(numpy_json.dumps(obj))["x"], json_numpy.loads(json_numpy.dumps(obj))["x"])


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(st.one_of(hnp.integer_dtypes(endianness="="), hnp.unsigned_integer_dtypes(endianness="="),
                            hnp.floating_dtypes(endianness="="), hnp.boolean_dtypes()),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_random_arrays_round_trip_through_both_codecs(arr):
    ours, theirs = numpy_json.dumps(arr), json_numpy.dumps(arr)
    assert ours == theirs
    assert_same(numpy_json.loads(theirs), json_numpy.loads(ours))


def obj(**overrides):
    base = {"__numpy__": "AAECAw==", "dtype": "|u1", "shape": [4]}
    return json.dumps({**base, **overrides})


@pytest.mark.parametrize("text, message", [
    (obj(__numpy__="not base64!!"), "not valid base64"),
    (obj(__numpy__="AAECAw"), "not valid base64"),  # missing padding
    (obj(__numpy__=5), "must be a base64 string"),
    (obj(shape=[5]), "holds 4 bytes"),
    (obj(shape=[2, 3]), "holds 4 bytes"),
    (obj(shape=[-4]), "non-negative ints"),
    (obj(shape="4"), "non-negative ints"),
    (obj(shape=[True] * 4), "non-negative ints"),
    (obj(shape=[1] * 40), "at most 32"),
    (obj(dtype="|O"), "not a plain numeric dtype"),
    (obj(dtype="<U1"), "not a plain numeric dtype"),
    (obj(dtype="|V4"), "not a plain numeric dtype"),
    (obj(dtype=[["a", "|u1"]]), "descr string"),
    (obj(dtype="banana"), "is not a numpy dtype"),
    (obj(dtype=None), "descr string"),
    (json.dumps({"__numpy__": "AAECAw==", "dtype": "|u1"}), "expected exactly"),
    (json.dumps({"__numpy__": "AAECAw==", "dtype": "|u1", "shape": [4], "x": 1}), "expected exactly"),
])
def test_malformed_objects_raise_with_a_reason(text, message):
    with pytest.raises(NumpyJsonError, match=message):
        numpy_json.loads(text)


def test_size_limit_is_checked_before_decoding():
    with pytest.raises(NumpyJsonError, match="larger than the 3-byte limit"):
        numpy_json.decode_array(json.loads(obj()), max_bytes=3)
    assert numpy_json.decode_array(json.loads(obj()), max_bytes=4).tolist() == [0, 1, 2, 3]
