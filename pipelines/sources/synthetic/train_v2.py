"""Synthetic stand-ins for VLM2Vec-V2's training sources, in the layout of their Hub repos
(`pipelines.v2_train.SOURCES`), small enough for the default run.

    counts = write_train_v2(out_dir / "V2-train", seed=0)     # {set: rows written}

writes::

    colpali_train_set/data/train-00000-of-00001.parquet        image {bytes, path}, image_filename, query,
                                                               answer, source, options, page, model,
                                                               prompt, answer_type (vidore/colpali_train_set)
    VisRAG-Ret-Train-In-domain-data/data/train-00000-of-00001.parquet   query, image, source
    train_video_and_instruction/video_instruction/train/sft/video_caption_300k.jsonl      id, video, conversations
    train_video_and_instruction/video_instruction/train/sft/video_240k_caption_15k.jsonl  (question turns)
    train_video_and_instruction/train_300k/<video>/frame_0001.jpg ...

Content a model can learn, each answer read off its input:

* colpali: report pages rendered as the synthetic ViDoRe set renders them (title, a table of three
  items with their values, a bar chart); the question asks the value of one item of the page, the
  answer is that value ("What is the value of north mills?" -> "42").
* VisRAG: other report pages; the query names an item of the page ("Which energy report page lists
  north mills?"), the positive is the page. The rows cycle through VisRAG's ten sources, so every
  prompt pair is used.
* LLaVA-Hound: videos of one coloured shape moving, growing, shrinking or changing colour (as the
  synthetic video classification set draws them); the caption says which shape, which colour and what
  it does ("A red circle moves to the left."); a question asks what the shape does or its colour.

Deterministic for a seed: one ``random.Random`` stream per source, PNG/JPEG with fixed settings,
parquet without timestamps. The jsonl and frame-folder layout follow VLM2Vec's training yaml and
download script (``video_frame_basedir: .../train_300k``); the column names follow its loaders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.sources.synthetic.video import ACTIONS, COLOURS, render_video, write_frames
from pipelines.sources.synthetic.visdoc import _png, plan_pages, render_page
from pipelines.v2_train import CAPTION_FILE, FRAME_FOLDER, QA_FILE, QUERY_PROMPTS, SOURCES

PAGE_FILE = "data/train-00000-of-00001.parquet"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
COLPALI_SCHEMA = pa.schema([("image", IMAGE), ("image_filename", pa.string()), ("query", pa.string()),
                            ("answer", pa.string()), ("source", pa.string()), ("options", pa.string()),
                            ("page", pa.string()), ("model", pa.string()), ("prompt", pa.string()),
                            ("answer_type", pa.string())])
VISRAG_SCHEMA = pa.schema([("query", pa.string()), ("image", IMAGE), ("source", pa.string())])
COLOUR_NAMES = ("red", "green", "blue", "orange")  # of video.COLOURS, in order
DOINGS = {"moving_left": "moves to the left", "moving_right": "moves to the right", "moving_up": "moves up",
          "moving_down": "moves down", "growing": "grows", "shrinking": "shrinks",
          "changing_colour": "changes colour"}
CAPTION_REQUEST = "<video>\nDescribe what happens in the video."


def _pages(seed: int, name: str, docs: int, pages: int):
    rng = random.Random(f"{seed}/{name}")
    return rng, plan_pages(rng, docs, pages)


def _write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="snappy")


def write_colpali(repo: Path, seed: int, docs: int, pages: int, size: int) -> int:
    """One question per page about one of its items; the answer is the item's value."""
    rng, corpus = _pages(seed, "colpali_train_set", docs, pages)
    rows = []
    for page in corpus:
        item, value = rng.choice(page.items)
        name = f"{page.topic}_report_{page.number}.png"
        rows.append({"image": {"bytes": _png(render_page(page, size)), "path": name}, "image_filename": name,
                     "query": f"What is the value of {item} in the {page.topic} report?", "answer": str(value),
                     "source": "synthetic", "options": None, "page": str(page.number), "model": "synthetic",
                     "prompt": "Answer from the page.", "answer_type": "extractive"})
    _write_parquet(repo / PAGE_FILE, rows, COLPALI_SCHEMA)
    return len(rows)


def write_visrag(repo: Path, seed: int, docs: int, pages: int, size: int) -> int:
    """One query per page naming one of its items; sources cycle through VisRAG's ten."""
    rng, corpus = _pages(seed, "visrag-indomain", docs, pages)
    sources = sorted(QUERY_PROMPTS)
    rows = [{"query": f"Which {page.topic} report page lists {rng.choice(page.items)[0]}?",
             "image": {"bytes": _png(render_page(page, size)), "path": None}, "source": sources[i % len(sources)]}
            for i, page in enumerate(corpus)]
    _write_parquet(repo / PAGE_FILE, rows, VISRAG_SCHEMA)
    return len(rows)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _turns(request: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": request}, {"from": "gpt", "value": answer}]


def write_llavahound(repo: Path, seed: int, videos: int, frames: int, size: int) -> dict[str, int]:
    """The videos' frame folders, one caption line and one question line per video."""
    rng = random.Random(f"{seed}/llavahound")
    captions, questions = [], []
    for v in range(videos):
        action = ACTIONS[v % len(ACTIONS)]
        c = rng.randrange(len(COLOURS))
        square = rng.random() < 0.5
        shape = "square" if square else "circle"
        video = f"syn_v{v:05d}"
        write_frames(repo / FRAME_FOLDER / video, render_video(action, COLOURS[c], square, frames, size))
        captions.append({"id": video, "video": video,
                         "conversations": _turns(CAPTION_REQUEST, f"A {COLOUR_NAMES[c]} {shape} {DOINGS[action]}.")})
        if action != "changing_colour" and rng.random() < 0.5:
            qa = (f"<video>\nWhat colour is the {shape}?", COLOUR_NAMES[c])
        else:
            qa = (f"<video>\nWhat does the {shape} do?", f"It {DOINGS[action]}.")
        questions.append({"id": f"{video}_qa", "video": video, "conversations": _turns(*qa)})
    _jsonl(repo / CAPTION_FILE, captions)
    _jsonl(repo / QA_FILE, questions)
    return {"captions": len(captions), "questions": len(questions)}


def write_train_v2(out: Path, seed: int = 0, docs: int = 7, pages: int = 3, videos: int = 24, frames: int = 12,
                   size: int = 64) -> dict[str, int]:
    """Write the three repos under ``out`` (the V2-train folder); {set: rows} of the five sets."""
    out = Path(out)
    colpali = write_colpali(out / SOURCES["colpali"].folder, seed, docs, pages, size)
    visrag = write_visrag(out / SOURCES["visrag"].folder, seed, docs, pages, size)
    hound = write_llavahound(out / SOURCES["llavahound"].folder, seed, videos, frames, size)
    return {"colpali_train_set": colpali, "visrag-indomain": visrag, "video_caption_300k": hound["captions"],
            "video_caption_300k-video": hound["captions"], "video_qa_240k": hound["questions"]}
