"""A BEIR-style visual-document set read and checked: MMEB-V2's ViDoRe, VisRAG and OOD sets in the
Hugging Face layout (configs ``queries``, ``corpus`` and ``qrels``), or ``Syn-ViDoRe``.

    docset = read_beir(Path("vidore/docvqa_test_subsampled_beir"), store=writer.add)
    docset.queries       [(query-id, text)] kept, source order
    docset.relevant      {query-id: [(corpus-id, grade)]} positives only, qrels order
    docset.pages         {corpus-id: ImageRef} kept pages, source order (bytes went to `store`)
    docset.rejects       every row refused, with its reason
    require_queries(name, len(docset.queries), expected)   # StageFailed when short

What VLM2Vec keeps, and where it would crash or drop data silently, this counts instead:

* qrels: only ``score > 0``, the highest score of a repeated (query, page) pair (``load_qrels_mapping``);
  a pair naming a page that is not in the corpus is rejected ``qrel_absent_corpus_id`` (VLM2Vec
  fails on the missing page file), one naming a rejected page ``qrel_rejected_page``, one naming an
  unknown query ``qrel_unknown_query`` (VLM2Vec ignores it);
* corpus: a repeated corpus id keeps its first page (VLM2Vec deduplicates candidates by name, first
  wins) and rejects the others ``duplicate_corpus_id``; a page without bytes is ``image_missing``,
  an undecodable, truncated, empty or oversized one gets `pipelines.images.prepare_image`'s reason;
* queries: a repeated query id is ``duplicate_query_id``; a query left without a positive page is
  ``no_positive`` (VLM2Vec fails on it with a KeyError); with ``language`` only the queries of that
  language are read (ViDoRe-V2's English entries), the others counted as filtered, not rejected.

Ids are kept as strings; ``id_type`` records whether the source's corpus ids (those of ``corpus`` and
of ``qrels``: the candidates VLM2Vec ranks and the labels it scores) were integers. ViDoRe's are, and
VLM2Vec's official NDCG order (``list(set(labels))``) depends on it: normalize writes it into the
dataset's ``dataset.json`` and evaluate gives such ids back as integers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from pipelines.errors import Rejected, StageFailed
from pipelines.images import prepare_image
from pipelines.imagestore import StoredImage

CONFIGS = ("queries", "corpus", "qrels")
DEFAULT_MAX_PIXELS = 1 << 28  # a guard against decompression bombs, not a resolution


@dataclass(frozen=True)
class ImageRef:
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Reject:
    table: str  # "queries" | "corpus" | "qrels"
    id: str  # the row's id ("<query-id>/<corpus-id>" for a qrel)
    reason: str
    detail: str


@dataclass
class BeirSet:
    queries: list[tuple[str, str]] = field(default_factory=list)
    relevant: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    pages: dict[str, ImageRef] = field(default_factory=dict)
    rejects: list[Reject] = field(default_factory=list)
    rows_in: dict[str, int] = field(default_factory=dict)
    filtered_language: int = 0
    id_type: str = "str"  # "int" when the source's corpus ids (corpus and qrels) were integers

    def counts(self) -> dict:
        """The dataset's entry for metrics/etl.json: rows in, kept, rejected by table and reason."""
        by_reason: dict[str, int] = {}
        for r in self.rejects:
            by_reason[f"{r.table}/{r.reason}"] = by_reason.get(f"{r.table}/{r.reason}", 0) + 1
        return {"rows_in": dict(self.rows_in), "queries": len(self.queries), "pages": len(self.pages),
                "qrels": sum(len(v) for v in self.relevant.values()), "filtered_language": self.filtered_language,
                "rejected": len(self.rejects), "rejected_by_reason": dict(sorted(by_reason.items())),
                "id_type": self.id_type}


def _read(folder: Path, config: str, split: str, columns: list[str]) -> dict[str, list]:
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no {config}/{split}-*.parquet (not a BEIR set in the Hub layout)")
    out: dict[str, list] = {c: [] for c in columns}
    for f in files:
        table = pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names])
        for c in columns:
            out[c] += table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows
    return out


def _read_pages(folder: Path, split: str, docset: BeirSet, store: Callable[[StoredImage], None],
                max_pixels: int) -> None:
    corpus = _read(folder, "corpus", split, ["corpus-id", "image"])
    docset.rows_in["corpus"] = len(corpus["corpus-id"])
    docset.id_type = "int" if corpus["corpus-id"] and all(type(c) is int for c in corpus["corpus-id"]) else "str"
    seen: set[str] = set()
    for cid, image in zip(corpus["corpus-id"], corpus["image"]):
        key = str(cid)
        if key in seen:
            docset.rejects.append(Reject("corpus", key, "duplicate_corpus_id", "a later row with the same corpus-id"))
            continue
        seen.add(key)
        try:
            data = (image or {}).get("bytes")
            if data is None:
                raise Rejected("image_missing", f"corpus-id {key}: the image has no bytes")
            stored = prepare_image(data, max_pixels).stored
        except Rejected as e:
            docset.rejects.append(Reject("corpus", key, e.reason, e.detail))
            continue
        store(stored)
        docset.pages[key] = ImageRef(stored.sha256, stored.width, stored.height)


def _read_queries(folder: Path, split: str, docset: BeirSet, language: str | None) -> list[tuple[str, str]]:
    queries = _read(folder, "queries", split, ["query-id", "query", "language"])
    docset.rows_in["queries"] = len(queries["query-id"])
    seen: set[str] = set()
    kept = []
    for qid, text, lang in zip(queries["query-id"], queries["query"], queries["language"]):
        if language is not None and lang != language:
            docset.filtered_language += 1
            continue
        if str(qid) in seen:
            docset.rejects.append(Reject("queries", str(qid), "duplicate_query_id", "a later row with the same query-id"))
            continue
        seen.add(str(qid))
        kept.append((str(qid), text))
    return kept


def _read_qrels(folder: Path, split: str, docset: BeirSet, query_ids: set[str]) -> None:
    qrels = _read(folder, "qrels", split, ["query-id", "corpus-id", "score"])
    docset.rows_in["qrels"] = len(qrels["query-id"])
    if not all(type(c) is int for c in qrels["corpus-id"]):
        docset.id_type = "str"
    rejected_pages = {r.id for r in docset.rejects if r.table == "corpus"}
    grades: dict[str, dict[str, float]] = {}
    for qid, cid, score in zip(qrels["query-id"], qrels["corpus-id"], qrels["score"]):
        q, c = str(qid), str(cid)
        if score is None or score <= 0:
            continue  # not a positive: VLM2Vec keeps score > 0 only
        reason = ("qrel_unknown_query" if q not in query_ids else None if c in docset.pages
                  else "qrel_rejected_page" if c in rejected_pages else "qrel_absent_corpus_id")
        if reason:
            docset.rejects.append(Reject("qrels", f"{q}/{c}", reason, f"query-id {q}, corpus-id {c}, score {score}"))
            continue
        grades.setdefault(q, {})
        grades[q][c] = max(grades[q].get(c, score), score)
    docset.relevant = {q: list(g.items()) for q, g in grades.items()}


def read_beir(folder: Path, split: str = "test", language: str | None = None,
              store: Callable[[StoredImage], None] = lambda image: None,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> BeirSet:
    """Read and check one BEIR set; each kept page's bytes go to ``store`` (an image-store writer's
    ``add``), only its reference stays in memory."""
    folder = Path(folder)
    docset = BeirSet()
    _read_pages(folder, split, docset, store, max_pixels)
    candidates = _read_queries(folder, split, docset, language)
    _read_qrels(folder, split, docset, {q for q, _ in candidates})
    for qid, text in candidates:
        if qid in docset.relevant:
            docset.queries.append((qid, text))
        else:
            docset.rejects.append(Reject("queries", qid, "no_positive", "no qrel with score > 0 names a kept page"))
    return docset


def require_queries(name: str, found: int, expected: int) -> None:
    """Fail the stage, naming the dataset, when it holds fewer queries than the published count."""
    if found < expected:
        raise StageFailed(f"MMEB-V2 dataset {name}: {found} queries of the {expected} expected "
                          f"({expected - found} missing); the download or the data is incomplete")
