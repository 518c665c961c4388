"""Small corpora in every input format prepare reads, each with the documents it holds (the truth)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "All:\nSpeak, speak. Café ☕ naïve\n",
    "Second Citizen:\nOne word, good citizens.\n\nFirst Citizen:\nWe are accounted poor citizens.\n",
    "MENENIUS:\nWhat work's, my countrymen, in hand? where go you\nWith bats and clubs? The matter? speak, I pray you.\n",
    "BRUTUS:\nThe gods preserve our noble tribunes!\n",
    "SICINIUS:\nSpeak, speak, speak.\n",
]


def make_pdf(lines: list[str]) -> bytes:
    """A one-page PDF showing ``lines`` in Helvetica (a valid file with a correct xref table)."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in lines) + " ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
            f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def _arrow_stream(path: Path, docs: list[str], column: str = "text") -> None:
    import pyarrow as pa

    table = pa.table({column: docs, "id": list(range(len(docs)))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)


def write_corpus(fmt: str, root: Path) -> tuple[Path, list[str]]:
    """Writes the corpus in format ``fmt`` under ``root``; returns its path and its documents in reading order."""
    root.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        path = root / "corpus.txt"
        path.write_text("".join(DOCS), encoding="utf-8")
        return path, ["".join(DOCS)]
    if fmt == "folder":
        for i, doc in enumerate(DOCS):
            sub = root / "corpus" / ("a" if i < 3 else "b")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i}.{'md' if i % 2 else 'txt'}").write_text(doc, encoding="utf-8")
        (root / "corpus" / "skip.bin").write_bytes(b"\x00\x01")  # not a corpus suffix: ignored
        return root / "corpus", DOCS
    if fmt in ("jsonl", "jsonl.gz"):
        lines = "".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(DOCS))
        path = root / f"corpus.{fmt}"
        path.write_bytes(gzip.compress(lines.encode()) if fmt.endswith("gz") else lines.encode())
        return path, DOCS
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = root / "corpus.parquet"
        pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), path, row_group_size=2)
        return path, DOCS
    if fmt == "hf_disk":  # the layout of datasets.Dataset.save_to_disk: Arrow stream files listed in state.json
        folder = root / "hf"
        folder.mkdir()
        _arrow_stream(folder / "data-00000-of-00002.arrow", DOCS[:3])
        _arrow_stream(folder / "data-00001-of-00002.arrow", DOCS[3:])
        (folder / "state.json").write_text(json.dumps({"_data_files": [
            {"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]}))
        (folder / "dataset_info.json").write_text("{}")
        return folder, DOCS
    if fmt == "pdf_docx":
        import docx

        folder = root / "office"
        folder.mkdir()
        (folder / "a.pdf").write_bytes(make_pdf(["Hello world", "second line"]))
        document = docx.Document()
        for para in ("A docx paragraph.", "Another one."):
            document.add_paragraph(para)
        document.save(str(folder / "b.docx"))
        (folder / "c.txt").write_text(DOCS[0], encoding="utf-8")
        return folder, ["Hello world\nsecond line\n", "A docx paragraph.\nAnother one.", DOCS[0]]
    raise ValueError(fmt)


FORMATS = ["txt", "folder", "jsonl", "jsonl.gz", "parquet", "hf_disk", "pdf_docx"]
