"""read_documents and split_documents: every corpus shape, every bad input's message, exact split points."""

from __future__ import annotations

import json

import pytest

from lmforge.data import default_corpus_path, read_documents, split_documents
from lmforge.errors import DataError


def test_default_corpus_is_bundled_tiny_shakespeare(shared_data):
    docs = read_documents(None)
    assert len(docs) == 1 and docs[0].startswith("First Citizen:\nBefore we proceed")
    assert default_corpus_path().read_bytes() == (shared_data / "tinyshakespeare" / "input.txt").read_bytes()


def test_text_file_with_bom_and_crlf(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert read_documents(tmp_path / "a.txt") == ["one\ntwo\nthree\n"]


def test_folder_is_read_recursively_sorted_txt_and_md_only(tmp_path):
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.md").write_text("A")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.TXT").write_text("C")
    (tmp_path / "sub" / "empty.txt").write_text("  \n")
    (tmp_path / "notes.csv").write_text("ignored")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00")
    assert read_documents(tmp_path) == ["A", "B", "C"]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "", "id": 2}\n{"text": "sécond", "meta": 1}\n', encoding="utf-8")
    assert read_documents(path) == ["first", "sécond"]


@pytest.mark.parametrize("content,needle", [
    ('{"text": "a"}\n{"body": "b"}\n', "line 2 has no 'text' string field"),
    ('{"text": "a"}\nnot json\n', "line 2 is not valid JSON"),
    ('{"text": ""}\n{"text": "   "}\n', "holds no non-empty 'text' field"),
    ('[1, 2]\n', "line 1 has no 'text' string field"),
])
def test_bad_jsonl(tmp_path, content, needle):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=needle):
        read_documents(path)


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="corpus path is empty"):
        read_documents("")
    (tmp_path / "e.txt").write_text("\n \n")
    with pytest.raises(DataError, match="e.txt is empty"):
        read_documents(tmp_path / "e.txt")


def test_folder_without_text_files(tmp_path):
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match="holds no .txt or .md files"):
        read_documents(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(DataError, match="all 1 .txt/.md files are empty"):
        read_documents(tmp_path)


def test_binary_file_names_file_and_offset(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.txt").write_bytes(b"PK\x03\x04" + b"\x00" * 10)
    with pytest.raises(DataError, match=r"model.txt looks like a binary file \(NUL byte at offset 4\)"):
        read_documents(tmp_path)


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
    # "héllo" in Latin-1: the é is byte 0xe9 at offset 1 and is not followed by continuation bytes.
    (tmp_path / "latin.txt").write_bytes("héllo wörld".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_documents(tmp_path / "latin.txt")
    assert str(err.value) == f"{tmp_path / 'latin.txt'} is not valid UTF-8 (bad byte 0xe9 at byte offset 1); re-save the file as UTF-8"
    # After a BOM and valid multi-byte text the offset still counts from the file's first byte.
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "añb".encode() + b"\xc3(")
    with pytest.raises(DataError, match="bad byte 0xc3 at byte offset 7"):
        read_documents(tmp_path / "bom.txt")


def test_split_fraction_and_line_boundary():
    lines = [f"line {i:03d}\n" for i in range(100)]  # 9 characters each, 900 in all
    train, val = split_documents(["".join(lines)], val_fraction=0.1)
    assert train == ["".join(lines[:90])] and val == ["".join(lines[90:])]
    train, val = split_documents(["".join(lines)], val_fraction=0.104)  # cut at 806.4 -> nearest line end 810
    assert len(train[0]) == 810 and val[0].startswith("line 090")


def test_split_across_documents_is_deterministic():
    docs = ["a" * 50, "b\n" * 20, "c" * 40, "d" * 10]  # 140 characters; cut at 126 falls inside "c"*40
    train, val = split_documents(docs, val_fraction=0.1)
    assert train == ["a" * 50, "b\n" * 20, "c" * 36] and val == ["c" * 4, "d" * 10]
    assert split_documents(docs, 0.1) == (train, val)
    train, val = split_documents(docs, val_fraction=0.5)  # cut at 70 is inside "b\n"*20, on a line end
    assert train == ["a" * 50, "b\n" * 10] and val == ["b\n" * 10, "c" * 40, "d" * 10]


def test_bundled_corpus_split_is_last_tenth():
    docs = read_documents()
    train, val = split_documents(docs)
    total = len(docs[0])
    assert train[0] + val[0] == docs[0]
    assert abs(len(val[0]) - 0.1 * total) < 200 and train[0].endswith("\n")


def test_split_too_short():
    with pytest.raises(DataError, match="too short to split"):
        split_documents(["x"], 0.1)
    with pytest.raises(DataError, match="too short to split"):
        split_documents([], 0.1)
