"""``lmforge embed RUN --input FILE --output vectors.npy``: text embeddings from a language model."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = "Embed texts with a language model: pooled final hidden states, L2-normalised, one row per text."

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge embed``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge embed runs/latest --input docs.txt --output vectors.npy\n"
                     "  lmforge embed runs/latest 'a cat' 'a dog'      # prints JSON vectors")
    parser.add_argument("run", metavar="RUN", help="a language-model run folder")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (or use --input)")
    parser.add_argument("--input", metavar="FILE", help="one text per line, or a .jsonl with a 'text' field")
    parser.add_argument("--output", metavar="FILE", help="write the vectors (N, D) float32 to this .npy file")
    parser.add_argument("--pooling", choices=["mean", "last"], default="mean", help="how token states are pooled (default mean)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")


def run(args: argparse.Namespace) -> int:
    """Embeds the texts and writes or prints the vectors."""
    import numpy as np

    from lmforge.api import LM, read_texts
    from lmforge.errors import DataError
    from lmforge.utils.files import atomic_open

    texts = list(args.texts) + (read_texts(args.input) if args.input else [])
    if not texts:
        raise DataError("nothing to embed; pass texts or --input FILE")
    lm = LM.load(args.run, device=args.device)
    emb = lm.embedder(args.pooling)
    emb.batch_size = max(1, args.batch_size)
    vecs = emb.embed(texts)
    if args.output:
        with atomic_open(args.output, "wb") as f:
            np.save(f, vecs)
        print(f"wrote {args.output}: {vecs.shape[0]} vectors of {vecs.shape[1]} dimensions ({args.pooling} pooling)",
              file=sys.stderr)
    else:
        for text, v in zip(texts, vecs):
            print(json.dumps({"text": text, "embedding": [round(float(x), 6) for x in v]}, ensure_ascii=False))
    return 0
