"""`nat corpus`: text files or a JSONL of passages -> ``passages.jsonl``, a saved ``bm25s`` index and
``corpus.json``, which ``--search-corpus FOLDER`` loads instead of indexing each run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from lightning_nat.core import jsonl
from lightning_nat.core.console import console
from lightning_nat.core.options import check_numbers, option
from lightning_nat.core.outputs import writing

TEXT_SUFFIXES = (".txt", ".md")
PASSAGES, INDEX, MANIFEST = "passages.jsonl", "index", "corpus.json"


def passage_text(passage: dict) -> str:
    """The text a passage is indexed and shown as: ``title: text`` (or the text alone).

    >>> passage_text({"title": "Genghis Khan", "text": "He had sixteen children."})
    'Genghis Khan: He had sixteen children.'
    >>> passage_text({"title": "", "text": "Untitled."})
    'Untitled.'
    """
    title, text = str(passage.get("title") or "").strip(), str(passage["text"]).strip()
    return f"{title}: {text}" if title else text


def passages_from_record(record: dict, fields: Sequence[str] = ("text",), title_field: str | None = "title"
                         ) -> list[dict[str, str]]:
    """The passages one JSONL record gives: each named field's string, or each string of its list.

    >>> passages_from_record({"term": "The Police", "facts": ["They were musicians.", " "],
    ...                       "decomposition": ["Who can arrest?"]}, ["facts", "decomposition"], "term")
    [{'title': 'The Police', 'text': 'They were musicians.'}, {'title': 'The Police', 'text': 'Who can arrest?'}]
    """
    title = str(record.get(title_field) or "") if title_field else ""
    out = []
    for name in fields:
        value = record.get(name)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and text.strip():
                out.append({"title": title, "text": " ".join(text.split())})
    return out


def passages_from_text(title: str, text: str, max_words: int = 200) -> list[dict[str, str]]:
    """A text file's passages: its paragraphs (blank-line separated), long ones cut every ``max_words`` words.

    >>> passages_from_text("notes", "First para.\\n\\nSecond\\npara.", max_words=200)
    [{'title': 'notes', 'text': 'First para.'}, {'title': 'notes', 'text': 'Second para.'}]
    >>> [p["text"] for p in passages_from_text("t", "a b c d e", max_words=2)]
    ['a b', 'c d', 'e']
    """
    out = []
    for para in text.replace("\r\n", "\n").split("\n\n"):
        words = para.split()
        for start in range(0, len(words), max_words):
            out.append({"title": title, "text": " ".join(words[start:start + max_words])})
    return out


def _text_file(path: Path) -> str:
    """A text source's text; a binary file (NUL bytes) or one that is not UTF-8 is a located error, never passages."""
    text = jsonl.read_text(path)  # undecodable bytes: a RecordError naming the file and line
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise jsonl.RecordError("a NUL byte: a binary file, not text", path, f"line {line}")
    return text


def read_sources(sources: Sequence[str | os.PathLike], fields: Sequence[str] = ("text",),
                 title_field: str | None = "title", max_words: int = 200) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Passages from JSONL files and folders of text files, and how many each source gave."""
    passages: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    for source in sources:
        path = Path(source)
        before = len(passages)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            if not files:
                raise ValueError(f"{path}: no {' or '.join(TEXT_SUFFIXES)} files")
            for f in files:
                passages += passages_from_text(f.stem, _text_file(f), max_words)
        elif path.suffix.lower() in TEXT_SUFFIXES:
            passages += passages_from_text(path.stem, _text_file(path), max_words)
        else:
            for lineno, record in jsonl.read_records(path):
                if isinstance(record, jsonl.RecordError):
                    raise record
                if not isinstance(record, dict):
                    raise ValueError(f"{path}, line {lineno}: expected a JSON object")
                if not any(record.get(f) for f in fields):
                    raise ValueError(f"{path}, line {lineno}: none of the fields {', '.join(fields)}")
                passages += passages_from_record(record, fields, title_field)
        counts[str(path)] = len(passages) - before
    return passages, counts


def dedupe(passages: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """Passages in first-seen order, each (title, text) once.

    >>> dedupe([{"title": "a", "text": "x"}, {"title": "a", "text": "x"}, {"title": "b", "text": "x"}])
    [{'title': 'a', 'text': 'x'}, {'title': 'b', 'text': 'x'}]
    """
    return list({(p["title"], p["text"]): p for p in passages}.values())


def build_corpus(sources: Sequence[str | os.PathLike], out: str | os.PathLike, fields: Sequence[str] = ("text",),
                 title_field: str | None = "title", max_words: int = 200) -> dict[str, Any]:
    """Read the sources, index the passages with BM25 and save everything under ``out``; returns the manifest."""
    import bm25s

    out = Path(out)
    passages, counts = read_sources(sources, fields, title_field, max_words)
    unique = dedupe(passages)
    if not unique:
        raise ValueError("no passages in " + ", ".join(str(s) for s in sources))
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([passage_text(p) for p in unique], show_progress=False), show_progress=False)
    jsonl.write_jsonl(out / PASSAGES, unique)
    retriever.save(str(out / INDEX), show_progress=False)
    manifest = {"passages": len(unique), "duplicates_dropped": len(passages) - len(unique), "sources": counts,
                "fields": list(fields), "title_field": title_field, "max_words": max_words}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def load_index(folder: str | os.PathLike) -> tuple[list[dict], Any]:
    """The passages and the saved BM25 index of a ``nat corpus`` folder, checked against each other."""
    import bm25s

    folder = Path(folder)
    for name in (PASSAGES, INDEX, MANIFEST):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder}: no {name} (is it a `nat corpus --out` folder?)")
    docs = jsonl.read_jsonl(folder / PASSAGES)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if len(docs) != manifest["passages"]:
        raise ValueError(f"{folder}: {PASSAGES} has {len(docs)} passages but the index was built on "
                         f"{manifest['passages']}; rebuild it with `nat corpus`")
    retriever = bm25s.BM25.load(str(folder / INDEX), show_progress=False)
    return docs, retriever


@dataclass(kw_only=True)
class CorpusConfig:
    """The options of ``nat corpus``."""

    sources: tuple[str, ...] = option(help="JSONL files of passages and/or folders (or files) of .txt/.md text",
                                      positional=True)
    fields: tuple[str, ...] = option(
        ("text",), "JSONL fields holding passage text, a string or a list of strings (default: text; e.g. facts "
                   "decomposition for the shared data's train.jsonl)")
    title_field: str = option("title", "JSONL field used as each passage's title (default: title; e.g. term)")
    max_words: int = option(200, "text files: longest passage in words (default: 200)", min=1)
    out: str = option(help="output folder: passages.jsonl, index/ and corpus.json (a rerun replaces its own output)")
    overwrite: bool = option(False, "replace --out even if it is a non-empty folder that is not an earlier "
                                    "`nat corpus` output (its files are deleted)")

    def __post_init__(self) -> None:
        check_numbers(self)


def run_corpus(cfg: CorpusConfig) -> int:
    """``nat corpus``: index the sources and say how to search them."""
    try:
        import bm25s  # noqa: F401 - checked before anything is read
    except ImportError:
        raise RuntimeError("nat corpus needs the search extra: pip install 'lightning_nat[search]' (from a clone: "
                           "pip install -e '.[search]')") from None
    with writing(cfg.out, "nat corpus", cfg.overwrite, inputs=cfg.sources) as staged:
        manifest = build_corpus(cfg.sources, staged, fields=cfg.fields, title_field=cfg.title_field or None,
                                max_words=cfg.max_words)
    console.print(f"indexed {manifest['passages']} passages ({manifest['duplicates_dropped']} duplicates dropped) "
                  f"into {escape(cfg.out)}; search it with --search-corpus {escape(cfg.out)}")
    return 0
