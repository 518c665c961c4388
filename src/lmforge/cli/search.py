"""``lmforge search RUN --docs FILE --query TEXT``: rank documents by embedding similarity, with a saved index."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = ("Rank the documents of a file by cosine similarity to a query. The document vectors are saved "
               "in the run folder and reused until the documents or the model change.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge search``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "example:\n  lmforge search runs/latest --docs docs.txt --query 'a king speaks' --top-k 3"
    parser.add_argument("run", metavar="RUN", help="a language-model run folder")
    parser.add_argument("--docs", required=True, metavar="FILE", help="one document per line, or a .jsonl with a 'text' field")
    parser.add_argument("--query", required=True, action="append", metavar="TEXT", help="the query (repeatable)")
    parser.add_argument("--top-k", type=int, default=5, help="how many documents to show (default 5)")
    parser.add_argument("--index", metavar="FILE", help="where to keep the index (default: inside the run folder)")
    parser.add_argument("--pooling", choices=["mean", "last"], default="mean", help="embedding pooling (default mean)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")


def run(args: argparse.Namespace) -> int:
    """Builds or reuses the index and prints the best documents for each query."""
    from lmforge.api import LM, default_index_path, read_texts

    docs = read_texts(args.docs)
    lm = LM.load(args.run, device=args.device)
    index_path = args.index or default_index_path(args.run, args.docs, args.pooling)
    results = []
    for i, query in enumerate(args.query):
        hits, rebuilt = lm.search(docs, query, top_k=max(1, args.top_k), index_path=index_path, pooling=args.pooling)
        if i == 0:
            state = "built" if rebuilt else "reused"
            print(f"index {state}: {index_path} ({len(docs)} documents)", file=sys.stderr)
        results.append({"query": query, "hits": [{"rank": r, "index": h.index, "score": round(h.score, 4), "text": h.text}
                                                  for r, h in enumerate(hits, 1)]})
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    for res in results:
        if len(results) > 1:
            print(f"query: {res['query']}")
        for h in res["hits"]:
            print(f"{h['rank']:>3}  {h['score']:.4f}  {h['text']}")
    return 0
