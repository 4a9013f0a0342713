"""Search re-ranking as the reference did it (10 -> bi-encoder top 5 -> DPR reader top 3), with tiny random models."""

import io
import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer, DPRConfig, DPRReader, DPRReaderTokenizer

from lightning_nat.agent.rerank import Reranker, top_k_by_cosine
from lightning_nat.core.tools import make_search

WORDS = ("paris france capital city river seine tower eiffel london england thames big ben rome italy colosseum "
         "berlin germany wall madrid spain museum who what where is the of in a").split()


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(path)


class TinyBiEncoder:
    """A random-init 1-layer BERT, mean-pooled: the shape of a sentence-transformers encoder."""

    def __init__(self, vocab):
        torch.manual_seed(0)
        self.tok = BertTokenizer(vocab)
        self.model = BertModel(BertConfig(vocab_size=self.tok.vocab_size, hidden_size=16, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=32)).eval()

    def encode(self, texts):
        enc = self.tok(list(texts), padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


@pytest.fixture(scope="module")
def reranker(vocab):
    torch.manual_seed(1)
    tok = DPRReaderTokenizer(vocab)
    reader = DPRReader(DPRConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32)).eval()
    return Reranker(TinyBiEncoder(vocab), reader, tok)


HITS = [(f"title {w}", f"{w} is the capital city of {c}") for w, c in
        (("paris", "france"), ("london", "england"), ("rome", "italy"), ("berlin", "germany"), ("madrid", "spain"),
         ("paris", "england"), ("rome", "spain"), ("london", "italy"), ("berlin", "france"), ("madrid", "germany"))]


def test_bi_encoder_top_5_then_reader_top_3(reranker):
    query = "what is the capital of france"
    got = reranker.rank(query, HITS)
    # Recompute each stage on its own: cosine top 5 by the encoder, then each passage's reader logit alone.
    emb = reranker.encoder.encode([query] + [t for _, t in HITS])
    sims = emb[1:] @ emb[0] / (np.linalg.norm(emb[1:], axis=1) * np.linalg.norm(emb[0]))
    five = list(np.argsort(-sims, kind="stable")[:5])
    assert sorted(top_k_by_cosine(emb[0], emb[1:], 5)) == sorted(five)
    alone = []
    for i in five:
        enc = reranker.reader_tokenizer(questions=query, titles=[HITS[i][0]], texts=[HITS[i][1]], return_tensors="pt")
        with torch.no_grad():
            alone.append(float(reranker.reader(**enc).relevance_logits[0]))
    want = [HITS[five[j]] for j in np.argsort(-np.array(alone), kind="stable")[:3]]
    assert got == want and len(got) == 3
    # Fewer hits than asked for: all of them, still reader-ordered; none: none.
    assert sorted(reranker.rank(query, HITS[:2])) == sorted(HITS[:2])
    assert reranker.rank(query, []) == []


def test_reranked_bm25_search_observation(reranker, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": t, "text": x}) + "\n" for t, x in HITS))
    search = make_search("bm25", reranker=reranker, corpus_path=str(corpus))
    obs = search("capital city of france")
    assert obs.startswith(" #1: ") and " #3: " in obs and " #4: " not in obs
    texts = {x for _, x in HITS}
    assert all(part.split(": ", 1)[1].strip() in texts for part in obs.split(" #")[1:])


def test_serper_asks_for_10_organic_results_and_reranks(reranker, monkeypatch):
    seen = {}

    def fake_urlopen(req, timeout):
        seen["body"] = json.loads(req.data.decode())
        organic = [{"title": t, "snippet": x, "link": "https://example.org"} for t, x in HITS]
        return io.BytesIO(json.dumps({"answerBox": {"answer": "Paris"}, "organic": organic}).encode())

    monkeypatch.setenv("SERPER_API_KEY", "test-key")
    monkeypatch.setattr("urllib.request.urlopen", fake_urlopen)
    obs = make_search("serper", reranker=reranker)("capital of france")
    assert seen["body"] == {"q": "capital of france", "num": 10}
    # Organic results only (the answer box is not a candidate), in the reranker's order.
    best = [x for _, x in reranker.rank("capital of france", HITS)]
    assert obs == f" #1: {best[0]} #2: {best[1]} #3: {best[2]}"
