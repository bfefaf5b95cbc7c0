"""A synthetic visual-document retrieval set in the BEIR layout of MMEB-V2's ViDoRe sets.

    write_visdoc(out_dir / "Syn-ViDoRe", seed=0)

writes, as the Hub repos ``vidore/<x>_test_beir`` hold them (configs ``queries``, ``corpus`` and
``qrels``, split ``test``)::

    Syn-ViDoRe/README.md                                   card with a `configs:` header
    Syn-ViDoRe/queries/test-00000-of-00001.parquet         query-id (int64), query (string)
    Syn-ViDoRe/corpus/test-00000-of-00001.parquet          corpus-id (int64), image (Image: bytes, path)
    Syn-ViDoRe/qrels/test-00000-of-00001.parquet           query-id, corpus-id, score (int64)

The corpus is ``docs`` reports of ``pages`` pages each. A page is rendered with Pillow: a title
("Energy report, page 2"), a table of three items with their values, and a bar chart of the same
values. Every item appears on exactly one page of the corpus, so a query about it ("What is the value
of north mills in the energy report?") has one answering page. The qrels are graded as ViDoSeek's:
the answering page 2, the other pages of the same report 1. Distractor reports no query asks about
stay in the corpus, so ranking is against pages a query does not name.

Deterministic for a seed: one ``random.Random`` stream, PNG with fixed settings, parquet without
timestamps. The exact ViDoRe file layout is inferred from the loaders (``load_dataset(repo,
"queries"|"corpus"|"qrels", split="test")``), not copied from a listing of the real repos.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image, ImageDraw, ImageFont

NAME = "Syn-ViDoRe"
TOPICS = ("energy", "water", "transport", "housing", "health", "farming", "trade", "tourism")
PLACES = ("north", "south", "east", "west", "central", "coastal", "upper", "lower")
THINGS = ("mills", "ports", "mines", "plants", "grids", "roads", "docks", "farms")
BAR_COLOURS = ((200, 60, 60), (60, 140, 60), (60, 90, 200))
QUERY_TEMPLATES = (
    "What is the value of {item} in the {topic} report?",
    "Which {topic} report page lists {item}?",
)
PNG_SETTINGS = {"compress_level": 6, "optimize": False}

_INT = {"dtype": "int64", "_type": "Value"}
SCHEMAS = {
    "queries": pa.schema([("query-id", pa.int64()), ("query", pa.string())]),
    "corpus": pa.schema([("corpus-id", pa.int64()),
                         ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]),
    "qrels": pa.schema([("query-id", pa.int64()), ("corpus-id", pa.int64()), ("score", pa.int64())]),
}
FEATURES = {
    "queries": {"query-id": _INT, "query": {"dtype": "string", "_type": "Value"}},
    "corpus": {"corpus-id": _INT, "image": {"_type": "Image"}},
    "qrels": {"query-id": _INT, "corpus-id": _INT, "score": _INT},
}


@dataclass(frozen=True)
class Page:
    corpus_id: int
    doc: int
    topic: str
    number: int  # 1-based page number within its report
    items: tuple[tuple[str, int], ...]  # (item, value) rows of the table and bars of the chart


def plan_pages(rng: random.Random, docs: int, pages: int) -> list[Page]:
    """The corpus: ``docs`` reports of ``pages`` pages, three distinct items a page, none repeated."""
    items = [f"{p} {t}" for p in PLACES for t in THINGS]
    if docs > len(TOPICS) or 3 * docs * pages > len(items):
        raise ValueError(f"at most {len(TOPICS)} reports and {len(items) // 3} pages in all")
    rng.shuffle(items)
    topics = rng.sample(TOPICS, docs)
    out = []
    for d, topic in enumerate(topics):
        for n in range(pages):
            rows = tuple((items.pop(), rng.randint(10, 99)) for _ in range(3))
            out.append(Page(len(out), d, topic, n + 1, rows))
    return out


def render_page(page: Page, size: int) -> Image.Image:
    """A portrait page: title, a two-column table, and a bar chart of the table's values."""
    w, h = size, round(size * 1.3)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(8, size // 12))
    draw.text((w * 0.05, h * 0.03), f"{page.topic.capitalize()} report, page {page.number}", fill=(0, 0, 0), font=font)
    top, row_h = h * 0.14, h * 0.09
    for i, (item, value) in enumerate(page.items):
        y = top + i * row_h
        draw.rectangle((w * 0.05, y, w * 0.95, y + row_h), outline=(0, 0, 0))
        draw.text((w * 0.08, y + row_h * 0.15), item, fill=(0, 0, 0), font=font)
        draw.text((w * 0.75, y + row_h * 0.15), str(value), fill=(0, 0, 0), font=font)
    base, bar_w = h * 0.95, w * 0.2
    for i, (_, value) in enumerate(page.items):
        x = w * 0.12 + i * w * 0.28
        draw.rectangle((x, base - value / 100 * h * 0.4, x + bar_w, base), fill=BAR_COLOURS[i])
    return img


def plan_queries(rng: random.Random, pages: list[Page], asked_docs: int) -> list[tuple[int, str, Page]]:
    """One query per page of the first ``asked_docs`` reports: (query-id, text, answering page)."""
    out = []
    for page in (p for p in pages if p.doc < asked_docs):
        item = rng.choice(page.items)[0]
        out.append((len(out), rng.choice(QUERY_TEMPLATES).format(item=item, topic=page.topic), page))
    return out


def qrels(queries: list[tuple[int, str, Page]], pages: list[Page]) -> list[tuple[int, int, int]]:
    """(query-id, corpus-id, score): the answering page 2, its report's other pages 1."""
    return [(qid, p.corpus_id, 2 if p is answer else 1)
            for qid, _, answer in queries for p in pages if p.doc == answer.doc]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **PNG_SETTINGS)
    return buf.getvalue()


def _write(table: dict[str, list], config: str, out: Path) -> None:
    schema = SCHEMAS[config].with_metadata({b"huggingface": json.dumps({"info": {"features": FEATURES[config]}}).encode()})
    path = out / config / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(table, schema=schema), path, compression="snappy")


def write_visdoc(out: Path, seed: int = 0, docs: int = 4, pages: int = 3, asked_docs: int = 3,
                 size: int = 96) -> dict[str, int]:
    """Write the set into ``out`` (created; existing files of the layout are overwritten) and return
    its counts: queries, corpus pages, qrels."""
    if not 0 < asked_docs <= docs:
        raise ValueError(f"asked_docs must be in 1..docs ({docs}), got {asked_docs}")
    rng = random.Random(f"{seed}/{NAME}")
    corpus = plan_pages(rng, docs, pages)
    queries = plan_queries(rng, corpus, asked_docs)
    labels = qrels(queries, corpus)
    out = Path(out)
    _write({"query-id": [q for q, _, _ in queries], "query": [t for _, t, _ in queries]}, "queries", out)
    _write({"corpus-id": [p.corpus_id for p in corpus],
            "image": [{"bytes": _png(render_page(p, size)), "path": f"{p.corpus_id}.png"} for p in corpus]},
           "corpus", out)
    _write({"query-id": [q for q, _, _ in labels], "corpus-id": [c for _, c, _ in labels],
            "score": [s for _, _, s in labels]}, "qrels", out)
    configs = [{"config_name": c, "data_files": [{"split": "test", "path": f"{c}/test-*"}]} for c in SCHEMAS]
    card = yaml.safe_dump({"pretty_name": f"Synthetic {NAME}", "configs": configs}, sort_keys=False)
    (out / "README.md").write_text(f"---\n{card}---\n\n# {NAME}\n\nSynthetic visual-document retrieval "
                                   "in the BEIR layout of MMEB-V2's ViDoRe sets.\n", encoding="utf-8")
    return {"queries": len(queries), "corpus": len(corpus), "qrels": len(labels)}
