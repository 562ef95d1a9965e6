"""Annotation files: the paper's -5 rule, and one-line errors naming file and line."""

import numpy as np
import pytest

from pipeline.common.errors import InputError
from pipeline.io.annotations import read_annotation, read_test_list


def write(tmp_path, text, name="t.txt"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_rows_with_minus_five_in_either_value_are_dropped(tmp_path):
    p = write(tmp_path, "valence,arousal\n0.1,0.2\n-5,-5\n-5,0.3\n0.4,-5\n-0.5,1\n")
    ann = read_annotation(p)
    assert ann.frames.tolist() == [1, 5]  # 1-based row numbers of the kept rows
    np.testing.assert_allclose(ann.labels, [[0.1, 0.2], [-0.5, 1.0]])
    assert ann.labels.dtype == np.float32 and ann.n_rows == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.1,0.2\n", "t.txt:1: expected the header 'valence,arousal', got '0.1,0.2'"),
        ("", "t.txt:1: expected the header 'valence,arousal', got 'an empty file'"),
        ("valence,arousal\n0.1,0.2\n0.1,abc\n", "t.txt:3: not a number: 'abc'"),
        ("valence,arousal\nnan,0.2\n", "t.txt:2: 'nan' is not a finite number"),
        ("valence,arousal\n0.1,1.5\n", "t.txt:2: 1.5 outside [-1, 1] (and not -5"),
        ("valence,arousal\n-4,0\n", "t.txt:2: -4 outside [-1, 1]"),
        ("valence,arousal\n0.1\n", "t.txt:2: expected 2 values"),
        ("valence,arousal\n0.1,0.2,0.3\n", "t.txt:2: expected 2 values 'valence,arousal', got '0.1,0.2,0.3'"),
        ("valence,arousal\n0.1,0.1\n\n0.2,0.2\n", "t.txt:3: empty line before the end"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, message):
    with pytest.raises(InputError) as e:
        read_annotation(write(tmp_path, text))
    assert message in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_header_is_case_and_space_tolerant_and_trailing_blank_lines_ok(tmp_path):
    ann = read_annotation(write(tmp_path, "Valence, Arousal\n0,0\n\n\n"))
    assert ann.frames.tolist() == [1]


def test_windows_line_endings_and_byte_order_mark_are_accepted(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffvalence,arousal\r\n0.1,0.2\r\n-5,-5\r\n0.3,-0.4\r\n".encode("utf-8"))
    ann = read_annotation(p)
    assert ann.frames.tolist() == [1, 3] and ann.n_rows == 3
    np.testing.assert_allclose(ann.labels, [[0.1, 0.2], [0.3, -0.4]])


def test_header_only_file_has_no_rows(tmp_path):
    ann = read_annotation(write(tmp_path, "valence,arousal\n"))
    assert ann.n_rows == 0 and len(ann.frames) == 0  # prepare refuses it, naming the file (test_prepare)


def test_test_list(tmp_path):
    (tmp_path / "test_set.txt").write_bytes(b"\xef\xbb\xbfa\r\n\r\n# comment\r\nb.mp4\r\nc_left  \r\nd.AVI\n")
    assert read_test_list(tmp_path) == ["a", "b", "c_left", "d"]
    assert read_test_list(tmp_path / "absent") == []


@pytest.mark.parametrize("line", ["../evil", "/abs/path", "sub/dir.mp4", "..\\x", "..", "."])
def test_test_list_names_must_be_plain(tmp_path, line):
    (tmp_path / "test_set.txt").write_text(f"ok\n{line}\n")
    with pytest.raises(InputError) as e:
        read_test_list(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'test_set.txt'}:2: trial name")
    assert "is not a plain name" in str(e.value)
