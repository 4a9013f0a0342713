"""Search results re-ranked as the paper's reference code did it.

The reference keeps the 5 of 10 Serper results most cosine-similar to the query under a bi-encoder
(``all-mpnet-base-v2``), then the 3 a DPR reader (``dpr-reader-multiset-base``) scores highest. The models are
arguments (the tests build tiny ones); :func:`load_reference_reranker` loads the paper's (the ``rerank`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BI_ENCODER = "sentence-transformers/all-mpnet-base-v2"
DPR_READER = "facebook/dpr-reader-multiset-base"


def top_k_by_cosine(query: Sequence[float], docs: Sequence[Sequence[float]], k: int) -> list[int]:
    """Indices of the ``k`` documents most cosine-similar to the query (best first; ties by position).

    >>> top_k_by_cosine([1.0, 0.0], [[0.0, 1.0], [1.0, 0.1], [2.0, 0.0], [-1.0, 0.0]], 2)
    [2, 1]
    """
    import numpy as np

    q = np.asarray(query, dtype=np.float64)
    d = np.asarray(docs, dtype=np.float64)
    if len(d) == 0:
        return []
    return top_k_by_score(d @ q / (np.linalg.norm(d, axis=1) * np.linalg.norm(q) + 1e-12), k)


def top_k_by_score(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first (ties by position).

    >>> top_k_by_score([0.1, 2.0, -1.0, 2.0], 3)
    [1, 3, 0]
    """
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order[: min(k, len(scores))]


@dataclass
class Reranker:
    """Bi-encoder top ``retrieve_k``, then DPR-reader top ``k``, as the reference code ranked snippets."""

    encoder: Any
    reader: Any
    reader_tokenizer: Any
    retrieve_k: int = 5
    k: int = 3

    def reader_scores(self, query: str, titles: Sequence[str], texts: Sequence[str]) -> list[float]:
        """The DPR reader's relevance logit of each (title, text) for the query."""
        import torch

        scores: list[float] = []
        for s in range(0, len(texts), 10):  # the reference scores 10 passages per forward pass
            enc = self.reader_tokenizer(questions=query, titles=list(titles[s:s + 10]), texts=list(texts[s:s + 10]),
                                        padding=True, truncation=True, max_length=512, return_tensors="pt")
            enc = enc.to(next(self.reader.parameters()).device)
            with torch.no_grad():
                out = self.reader(**enc)
            scores += out.relevance_logits.float().cpu().tolist()
        return scores

    def rank(self, query: str, hits: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The ``k`` best ``(title, text)`` hits, best first."""
        if not hits:
            return []
        texts = [t for _, t in hits]
        embeddings = self.encoder.encode([query] + texts)
        kept = top_k_by_cosine(embeddings[0], embeddings[1:], self.retrieve_k)
        titles = [hits[i][0] for i in kept]
        scores = self.reader_scores(query, titles, [texts[i] for i in kept])
        return [hits[kept[i]] for i in top_k_by_score(scores, self.k)]


def load_reference_reranker(device: str | None = None) -> Reranker:
    """The paper's models: MPNet bi-encoder and the DPR reader (downloads them; needs the ``rerank`` extra)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RuntimeError("re-ranking needs sentence-transformers: pip install 'lightning_nat[rerank]' (from a clone: "
                           "pip install -e '.[rerank]')") from exc
    from transformers import DPRReader, DPRReaderTokenizer

    encoder = SentenceTransformer(BI_ENCODER, device=device)
    reader = DPRReader.from_pretrained(DPR_READER).eval()
    if device:
        reader = reader.to(device)
    return Reranker(encoder, reader, DPRReaderTokenizer.from_pretrained(DPR_READER))
