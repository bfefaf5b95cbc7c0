"""VLM2Vec-V2's training sources: the loaders' exact strings (checked by hand against
TIGER-AI-Lab/VLM2Vec's vidore_dataset.py, visrag_dataset.py and llavahound_dataset_{caption,qa}.py),
the readers on the synthetic stand-ins, and rows refused with their reasons."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import v2_train
from pipelines.imagestore import ImageStoreWriter
from pipelines.normalize_v2_train import normalize_v2_train, problems
from pipelines.schema import REJECT_SCHEMA, V2_TRAIN_SCHEMA
from pipelines.sources.synthetic.train_v2 import write_train_v2
from pipelines.sources.v2_train import read_set
from pipelines.v2_train import SETS
from tests.support.params import section

CHARTQA_QUERY = ("This query is related to retrieving a relevant chart that visually represents numerical or "
                 "categorical data. The retrieved chart should contain bar graphs, line charts, or other visual "
                 "elements necessary to analyze trends, compare values, or extract insights related to the query: ")


def test_colpali_query_is_token_space_question_and_the_answer_is_the_target():
    assert v2_train.colpali_query("What is the total?") == "<|image_1|> What is the total?"


def test_visrag_strings_keep_the_loader_spaces():
    # f'{prompt} {query} {image_token}' with image_token "" (query) and query "" (target)
    assert v2_train.visrag_query("Which chart shows sales?", "ChartQA") == (
        CHARTQA_QUERY + " Which chart shows sales? ")
    assert v2_train.visrag_target("ChartQA") == (
        "A statistical chart comparing values or analyzing trends.  <|image_1|>")
    assert v2_train.visrag_target("Textbooks") == (
        "A textbook page with structured educational content and explanations.  <|image_1|>")
    # a source without a prompt: f'{query} {image_token}'
    assert v2_train.visrag_query("q", "Elsewhere") == "q "
    assert v2_train.visrag_target("Elsewhere") == " <|image_1|>"


def test_visrag_has_ten_prompt_pairs():
    names = {"NeurIPS Papers", "Textbooks", "ICML Papers", "Manuallib", "ArxivQA", "ChartQA", "MP-DocVQA", "InfoVQA",
             "PlotQA", "SlideVQA"}
    assert set(v2_train.QUERY_PROMPTS) == set(v2_train.TARGET_PROMPTS) == names
    assert v2_train.QUERY_PROMPTS["ChartQA"] == CHARTQA_QUERY
    assert all(p.endswith("query: ") for p in v2_train.QUERY_PROMPTS.values())
    assert v2_train.TARGET_PROMPTS["MP-DocVQA"] == "A page from a multi-page document with text or tables."


def test_llavahound_pairs_per_mode():
    request, caption = "<video>\nDescribe the video.", "A dog runs."
    assert v2_train.llavahound_pair(SETS["video_caption_300k"], request, caption) == (
        "<|video_1|>\nDescribe the video.", "A dog runs.")
    assert v2_train.llavahound_pair(SETS["video_caption_300k-video"], request, caption) == (
        "Find a video that contains the following visual content: A dog runs.",
        "Understand the content of the provided video: <|video_1|>")
    assert v2_train.llavahound_pair(SETS["video_qa_240k"], "<video>\nWhat runs?", "A dog.") == (
        "Answer a question based on the content of a video. <|video_1|>\nWhat runs?", "A dog.")
    assert [v2_train.video_side(SETS[n]) for n in ("video_caption_300k", "video_caption_300k-video",
                                                   "video_qa_240k")] == ["query", "target", "query"]
    assert v2_train.WEIGHTS == {"colpali_train_set": 10, "visrag-indomain": 12, "video_caption_300k": 5,
                                "video_caption_300k-video": 5, "video_qa_240k": 5}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """The synthetic stand-ins, tiny: 3 pages per page set, 4 videos of 12 frames at 24 px."""
    root = tmp_path_factory.mktemp("v2train") / "raw"
    counts = write_train_v2(root / v2_train.RAW_FOLDER, docs=1, pages=3, videos=4, size=24)
    return root, counts


def _normalize(raw_root, tmp_path, **overrides):
    params = section("normalize", **{"rows_per_part": 2, **overrides})
    counts = normalize_v2_train(raw_root, tmp_path / "norm", tmp_path / "rej", params)
    return counts, tmp_path / "norm" / "train", tmp_path / "rej" / "train"


def test_normalize_writes_every_set_in_the_v2_train_schema(raw, tmp_path):
    root, written = raw
    counts, out, rejects = _normalize(root, tmp_path)
    assert {n: c["pairs"] for n, c in counts.items()} == written
    assert not rejects.exists() and problems(counts, 0.0) == []
    rows = {}
    for name in SETS:
        parts = sorted((out / name).glob("pairs-*.parquet"))
        assert not list((out / name).glob("part-*.parquet"))  # V1's glob leaves the pairs out
        assert all(pq.read_schema(p).equals(V2_TRAIN_SCHEMA, check_metadata=False) for p in parts)
        rows[name] = [r for p in parts for r in pq.read_table(p).to_pylist()]
    assert len(list((out / "video_qa_240k").glob("pairs-*.parquet"))) == 2  # 4 rows, 2 a part
    colpali = rows["colpali_train_set"][0]
    assert colpali["id"] == "colpali_train_set/train/0" and colpali["meta_task"] == "vqa"
    assert colpali["query"]["raw"].startswith("<|image_1|> What is the value of ")
    assert colpali["query"]["image"]["width"] == 24 and colpali["target"]["image"] is None
    page_items = colpali["query"]["raw"].split("value of ")[1]
    assert colpali["target"]["raw"].isdigit() and page_items.endswith("report?")
    visrag = rows["visrag-indomain"][0]
    assert visrag["query"]["image"] is None and visrag["target"]["raw"].endswith(".  <|image_1|>")
    assert visrag["query"]["raw"].endswith("? ") and visrag["negatives"] == []
    caption, video, qa = (rows[n][0] for n in ("video_caption_300k", "video_caption_300k-video", "video_qa_240k"))
    assert caption["query"]["raw"] == "<|video_1|>\nDescribe what happens in the video."
    assert len(caption["query"]["video"]) == 8 and caption["query"]["frames_available"] == 12
    assert video["target"]["video"] == caption["query"]["video"] and video["query"]["video"] is None
    assert video["query"]["raw"] == v2_train.VRET_QUERY_PROMPT + caption["target"]["raw"]
    assert qa["query"]["raw"].startswith("Answer a question based on the content of a video. <|video_1|>\n")
    assert counts["video_caption_300k"]["frames_stored"] == 4 * 8


def test_rows_refused_are_counted_with_their_reasons(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw[0], root)
    hound = root / v2_train.RAW_FOLDER / v2_train.SOURCES["llavahound"].folder
    (hound / v2_train.FRAME_FOLDER / "empty_video").mkdir()
    turns = [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "That."}]
    extra = [{"id": "a", "video": "empty_video", "conversations": turns},
             {"id": "b", "video": "no_such_video", "conversations": turns},
             {"id": "c", "video": "../../escape", "conversations": turns},
             {"id": "d", "video": "syn_v00000", "conversations": turns[:1]},
             {"id": "e", "video": "syn_v00000", "conversations": [{"value": "What?"}, turns[1]]},  # no <video>
             {"id": "f", "video": "syn_v00000", "conversations": [{"value": "<video> <|image_1|>?"}, turns[1]]}]
    with open(hound / v2_train.QA_FILE, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in extra) + "{not json\n")
    counts, out, rejects = _normalize(root, tmp_path)
    qa = counts["video_qa_240k"]
    assert (qa["rows_in"], qa["pairs"]) == (11, 4)
    assert qa["rejected_by_reason"] == {"conversation_short": 1, "frames_empty": 1, "frames_missing": 1,
                                        "placeholder_mismatch": 2, "row_malformed": 1, "video_path_unsafe": 1}
    table = pq.read_table(rejects / "video_qa_240k.parquet")
    assert table.schema.equals(REJECT_SCHEMA, check_metadata=False)
    assert table.column("id").to_pylist() == [f"video_qa_240k/train/{i}" for i in range(4, 11)]
    assert json.loads(table.column("row").to_pylist()[0])["video"] == "empty_video"
    assert problems(counts, 0.2) == [
        "V2 training set video_qa_240k: 7/11 rows rejected > normalize.max_dataset_reject_fraction 20.00% "
        f"({qa['rejected_by_reason']})"]


def test_a_bad_page_is_rejected_and_a_short_set_fails(raw, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw[0], root)
    path = root / v2_train.RAW_FOLDER / v2_train.SOURCES["colpali"].folder / "data/train-00000-of-00001.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["image"]["bytes"] = b"not an image"
    table[1]["answer"] = " "
    pq.write_table(pa.Table.from_pylist(table, schema=pq.read_schema(path)), path)
    writer = ImageStoreWriter(tmp_path / "images", "t")
    pairs = read_set(root / v2_train.RAW_FOLDER, SETS["colpali_train_set"], section("normalize"), writer.add)
    assert [(r["reason"], r["id"]) for r in pairs.rejects] == [("image_undecodable", "colpali_train_set/train/0"),
                                                                ("text_empty", "colpali_train_set/train/1")]
    assert "bytes" not in json.loads(pairs.rejects[0]["row"])["image"]
    short = {"rows_in": 3, "pairs": 3, "rejected": 0, "rejected_by_reason": {}, "expected": 5}
    assert problems({"colpali_train_set": short}, 0.2) == [
        "V2 training set colpali_train_set: 3 rows of the 5 expected"]


def test_the_full_v2_profile_carries_the_yaml_mixture():
    from pipelines import mmeb, profiles

    values = profiles.load_profile("vlm2vec-v2-full").values
    mixture = values["train.mixture"]
    assert {n: mixture[n] for n in v2_train.WEIGHTS} == v2_train.WEIGHTS
    mmeb_train = {n: w for n, w in mixture.items() if n not in v2_train.WEIGHTS}
    assert set(mmeb_train) == set(mmeb.MMEB_TRAIN) and len(mmeb_train) == 20
    assert set(mmeb_train.values()) == {1, 0.5} and sum(mmeb_train.values()) == 15
    assert values["train.homogeneous_batch"] == 64
