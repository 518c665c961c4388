"""Bad input to prepare: one clear line (naming the file and line) or, with --skip-bad, a counted skip; a full
disk leaves no partial shard that could be reused, and the next run resumes to the same shards."""

from __future__ import annotations

import errno
import gzip
import json

import pytest

from corpora import DOCS, make_pdf, write_corpus
from lmforge.cli.main import main
from lmforge.data import shards
from lmforge.data.prepare import prepare
from lmforge.tokenizers import TokenizerSpec
from lmforge.errors import DataError

CHAR = TokenizerSpec("char")


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_line_without_the_field_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": DOCS[0]}, {"body": "x"}, {"text": DOCS[1]}, {"text": 3}])
    with pytest.raises(DataError, match=r"c\.jsonl line 2 has no 'text' field"):
        prepare(path, tmp_path / "o", tokenizer=CHAR, val_fraction=0.3)
    data = prepare(path, tmp_path / "o", tokenizer=CHAR, val_fraction=0.3, skip_bad=True)
    assert data.meta["skipped"] == {"no 'text' field": 2}
    assert data.meta["train"]["documents"] + data.meta["val"]["documents"] == 2


def test_invalid_json_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": DOCS[0]}) + "\n{not json\n" + json.dumps({"text": DOCS[1]}) + "\n")
    with pytest.raises(DataError, match=r"c\.jsonl line 2 is not valid JSON"):
        prepare(path, tmp_path / "o", tokenizer=CHAR, val_fraction=0.3)


def test_corrupt_gzip(tmp_path):
    import random

    rng = random.Random(0)  # text that compresses poorly, so the damage falls well after the first lines
    lines = [json.dumps({"text": " ".join(str(rng.random()) for _ in range(20))}) + "\n" for _ in range(2000)]
    raw = gzip.compress("".join(lines).encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(raw[: len(raw) // 2])  # a download cut off half-way
    with pytest.raises(DataError, match=r"c\.jsonl\.gz is a corrupt gzip file"):
        prepare(path, tmp_path / "o", tokenizer=CHAR)
    data = prepare(path, tmp_path / "o", tokenizer=CHAR, skip_bad=True)
    assert data.meta["skipped"] == {"corrupt gzip": 1}
    assert 0 < data.meta["train"]["documents"] + data.meta["val"]["documents"] < 2000
    (tmp_path / "t.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="corrupt gzip"):
        prepare(tmp_path / "t.jsonl.gz", tmp_path / "o2", tokenizer=CHAR)


def test_parquet_without_the_text_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS, "id": list(range(len(DOCS)))}), tmp_path / "c.parquet")
    with pytest.raises(DataError, match=r"c\.parquet has no column 'text' \(columns: body, id\); pass --text-field NAME"):
        prepare(tmp_path / "c.parquet", tmp_path / "o", tokenizer=CHAR)
    data = prepare(tmp_path / "c.parquet", tmp_path / "o", tokenizer=CHAR, text_field="body", val_fraction=0.3)
    assert data.meta["train"]["documents"] + data.meta["val"]["documents"] == len(DOCS)


def test_unreadable_pdf(tmp_path):
    folder, docs = write_corpus("pdf_docx", tmp_path)
    (folder / "z.pdf").write_bytes(make_pdf(["x"])[:60])  # truncated: no objects, no xref
    with pytest.raises(DataError, match=r"cannot read .*z\.pdf"):
        prepare(folder, tmp_path / "o", tokenizer=CHAR, val_fraction=0.3)
    data = prepare(folder, tmp_path / "o", tokenizer=CHAR, val_fraction=0.3, skip_bad=True)
    assert data.meta["skipped"] == {"unreadable pdf": 1}
    assert data.meta["train"]["documents"] + data.meta["val"]["documents"] == len(docs)


def test_invalid_utf8_text_file_names_the_offset(tmp_path):
    (tmp_path / "c.txt").write_bytes(DOCS[0].encode() * 3 + b"\xff" + DOCS[1].encode())
    with pytest.raises(DataError, match=rf"c\.txt is not valid UTF-8 \(bad byte at byte offset {len(DOCS[0].encode()) * 3}\)"):
        prepare(tmp_path / "c.txt", tmp_path / "o", tokenizer=CHAR)


def test_disk_full_leaves_no_partial_shard_and_resumes(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("".join(DOCS) * 40, encoding="utf-8")
    opts = dict(tokenizer=CHAR, val_fraction=0.2, block_chars=64, shard_tokens=500)
    monkeypatch.setattr("lmforge.data.pipeline._BATCH_UNITS", 4)
    clean = prepare(path, tmp_path / "clean", **opts)
    real_write = shards.ShardWriter.write
    calls = []

    def full_disk(self, *a, **k):
        calls.append(1)
        if len(calls) == 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *a, **k)

    monkeypatch.setattr(shards.ShardWriter, "write", full_disk)
    with pytest.raises(DataError, match="disk holding .* is full; free some space"):
        prepare(path, tmp_path / "full", **opts)
    names = [p.name for p in (tmp_path / "full").iterdir()]
    assert not [n for n in names if "partial" in n or n.endswith(".tmp")]
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert not manifest["complete"]
    listed = {e["file"] for s in ("train", "val") for e in manifest["shards"][s]}
    assert {n for n in names if n.endswith(".bin")} == listed  # every shard on disk is complete and listed
    monkeypatch.setattr(shards.ShardWriter, "write", real_write)
    resumed = prepare(path, tmp_path / "full", **opts)
    assert resumed.resumed and resumed.train.tolist() == clean.train.tolist() and resumed.val.tolist() == clean.val.tolist()


def test_cli_prints_one_line_and_no_traceback(tmp_path, capsys):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": DOCS[0]}, {"body": "x"}])
    code = main(["prepare", str(path), "--tokenizer", "char", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and "c.jsonl line 2 has no 'text' field" in err and "--skip-bad" in err
    code = main(["prepare", str(tmp_path / "missing.txt"), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: corpus path") and "does not exist" in err
