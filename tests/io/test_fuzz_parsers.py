"""Fuzzing the two parsers that read untrusted names and bytes: PNG headers and folder names.

Whatever the input, the PNG header reader returns a valid header or raises its documented
:class:`~bonemet_dask.io.png_header.PngHeaderError` (and the batched reader returns one of the two
per file), and the folder-name parsers return None or a value within their documented range.
Ids they return are short runs of ASCII digits, so a store path built from them stays under the
store root.  Each example must finish well inside Hypothesis' deadline: no input may stall them.
"""

from __future__ import annotations

import posixpath
import struct
import uuid
import zlib
from datetime import timedelta

import fsspec
import imagecodecs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bonemet_dask import naming
from bonemet_dask.io.png_header import (
    HEADER_NBYTES,
    PNG_SIGNATURE,
    PngHeader,
    PngHeaderError,
    parse_png_header,
    read_png_headers,
)
from bonemet_dask.io.store import scan_group_path

FUZZ = settings(max_examples=250, deadline=timedelta(seconds=2))

VALID = [
    imagecodecs.png_encode(np.zeros((5, 7), np.uint8)),
    imagecodecs.png_encode(np.zeros((3, 2), np.uint16)),
    imagecodecs.png_encode(np.zeros((4, 4, 3), np.uint8)),
    imagecodecs.png_encode(np.zeros((2, 9, 4), np.uint16)),
]


def check_header(header: PngHeader) -> None:
    """The documented invariants of a header the reader returned."""
    assert 0 < header.width < 2**31 and 0 < header.height < 2**31
    assert header.colour_type in (0, 2, 3, 4, 6) and header.interlace in (0, 1)
    assert header.bit_depth in (1, 2, 4, 8, 16)
    assert header.channels in (1, 2, 3, 4) and header.dtype in ("uint8", "uint16")


def parse_or_error(data: bytes) -> PngHeader | PngHeaderError:
    try:
        header = parse_png_header(data, path="fuzz.png")
    except PngHeaderError as err:  # anything else fails the test
        assert err.reason in ("truncated", "not-png", "bad-ihdr", "bad-crc", "invalid")
        assert "fuzz.png" in str(err) and err.path == "fuzz.png"
        return err
    check_header(header)
    return header


@FUZZ
@given(data=st.binary(max_size=80))
def test_arbitrary_bytes_give_a_header_or_the_documented_error(data):
    parse_or_error(data)


@FUZZ
@given(data=st.binary(min_size=0, max_size=60).map(lambda tail: PNG_SIGNATURE + tail))
def test_bytes_after_a_good_signature_give_a_header_or_the_documented_error(data):
    parse_or_error(data)


@FUZZ
@given(
    base=st.sampled_from(VALID),
    flips=st.lists(st.tuples(st.integers(0, HEADER_NBYTES - 1), st.integers(0, 255)), max_size=6),
    fix_crc=st.booleans(),
    cut=st.none() | st.integers(0, HEADER_NBYTES),
)
def test_mutated_valid_headers_give_a_header_or_the_documented_error(base, flips, fix_crc, cut):
    data = bytearray(base[:HEADER_NBYTES])
    for index, value in flips:
        data[index] = value
    if fix_crc:  # let the mutation reach the field checks instead of stopping at the CRC
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    outcome = parse_or_error(bytes(data[:cut]) if cut is not None else bytes(data))
    if not flips and cut in (None, HEADER_NBYTES):
        assert outcome == parse_png_header(base)  # an untouched header still parses


_FILES = st.lists(
    st.one_of(
        st.binary(max_size=70),
        st.sampled_from(VALID),
        st.sampled_from(VALID).map(lambda b: b[: len(b) // 2]),
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=60,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blobs=_FILES, with_sizes=st.booleans())
def test_batched_reader_returns_one_outcome_per_file(blobs, with_sizes):
    fs = fsspec.filesystem("memory")
    base = f"/fuzz-{uuid.uuid4().hex}"
    paths = [f"{base}/{i}.png" for i in range(len(blobs))]
    try:
        for path, blob in zip(paths, blobs, strict=True):
            fs.pipe(path, blob)
        sizes = [len(b) for b in blobs] if with_sizes else None
        results = read_png_headers(
            fs, [*paths, f"{base}/missing.png"], sizes=[*sizes, 0] if sizes else None
        )
    finally:
        fs.rm(base, recursive=True)
    assert len(results) == len(blobs) + 1
    for path, blob, result in zip(paths, blobs, results, strict=False):
        if isinstance(result, PngHeaderError):
            assert result.path == path and path in str(result)
        else:
            check_header(result)
            assert result == parse_png_header(blob)
            assert not with_sizes or blob in VALID  # a cut file never passes with its size known
    assert isinstance(results[-1], PngHeaderError)  # missing file: returned, not raised


# ------------------------------------------------------------------------------- folder names

_PIECES = st.sampled_from(
    ["week", "Week", "wk", "w", " ", "-", "_", "+", "/", "..", ".", "\x00", "\n", "L", "R",
     "left", "right", "tibia", "Recon-CT", "2.", "0", "1", "851", "99999999999999999999",
     "\u0663", "\uff11", "\u00b2", "\u202e", "ß"]
)  # fmt: skip
NAMES = st.one_of(st.text(max_size=40), st.lists(_PIECES, max_size=8).map("".join))


def safe_id(text: str) -> bool:
    """A run of ASCII digits short enough for an int64: nothing a path could be escaped with."""
    return text.isascii() and text.isdigit() and len(text.lstrip("0")) <= naming.MAX_ID_DIGITS


@FUZZ
@given(name=NAMES)
def test_week_parsers_never_raise_and_stay_in_range(name):
    week = naming.parse_week(name)
    reason = naming.invalid_week(name)
    assert week is None or (type(week) is int and 0 <= week <= naming.MAX_WEEK)
    assert reason is None or isinstance(reason, str)
    assert not (week is not None and reason is not None)
    if week is not None:
        assert naming.parse_week(naming.week_folder_name(week)) == week


@FUZZ
@given(name=NAMES)
def test_scan_folder_parser_returns_only_safe_ids(name):
    scan = naming.parse_scan_folder(name)
    if scan is None:
        return
    assert safe_id(scan.mouse) and scan.side in naming.SIDES and scan.original == name
    for component in naming.COMPONENTS:
        group = scan_group_path(component, scan.mouse, scan.side, 0)
        joined = posixpath.normpath(posixpath.join("/store", group))
        assert joined.startswith("/store/") and "\x00" not in group
        assert ".." not in group.split("/")


@FUZZ
@given(name=NAMES)
def test_component_and_index_parsers_never_raise(name):
    assert naming.parse_component(name) in (None, *naming.COMPONENTS)
    index = naming.parse_index(name)
    assert index is None or (type(index) is int and 0 <= index < 10**naming.MAX_ID_DIGITS)


@pytest.mark.parametrize(
    ("name", "week", "says"),
    [
        ("week -1", None, "negative"),
        ("week 99999999999999999999", None, "above"),
        ("week " + "9" * 5000, None, "digits"),  # int() of it would raise in Python >= 3.11
        ("week-1", 1, None),
        ("Week_2", 2, None),
        ("week \u0663", None, None),  # an Arabic-Indic 3 is not a week number
    ],
)
def test_week_examples_fuzzing_found_or_guards(name, week, says):
    assert naming.parse_week(name) == week
    reason = naming.invalid_week(name)
    assert (reason is None) if says is None else (says in reason)
