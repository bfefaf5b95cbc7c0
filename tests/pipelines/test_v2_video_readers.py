"""The video loader families of normalize_v2 on hand-written sets of the registry's real tasks, in the
Hub layout (config folders, MVBench's subset folders, the tasks' frame roots): the exact input strings
VLM2Vec's loaders build, the candidates and gold, and every bad row rejected with its reason."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import mmeb_v2
from pipelines.normalize_v2 import normalize_v2
from tests.support.params import section

QA = ("<|video_1|> Given a video and a question, select the most accurate answer from the provided candidates. "
      "Return only the exact text of your chosen answer. Question:  ")
TARGET = "<|video_1|> Understand the content of the provided video."


def jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "JPEG")
    return buf.getvalue()


def frames(folder, n=3, colour=(200, 30, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:04d}.jpeg").write_bytes(jpeg(colour))


def annotate(root, name, rows, sub=None):
    task = mmeb_v2.TASKS[name]
    folder = root / name / (sub or task.hub_config or "")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{task.hub_split}-00000-of-00001.parquet")
    return root / task.root


def write_qa_sets(root):
    fr = annotate(root, "NExTQA", [
        {"video": 11, "question": "what does the man do", "answer": 2, "qid": 0, "type": "CW",
         **{f"a{i}": o for i, o in enumerate(["run", "jump", "sit", "eat", "sleep"])}},
        {"video": 11, "question": "again", "answer": 1, "qid": 0, "type": "CW",
         **{f"a{i}": "x" for i in range(5)}},  # same video + qid
        {"video": 11, "question": "why", "answer": 7, "qid": 1, "type": "CW", **{f"a{i}": "y" for i in range(5)}},
        {"video": 12, "question": "who", "answer": 0, "qid": 0, "type": "CW", **{f"a{i}": "z" for i in range(5)}},
    ])
    frames(fr / "11")  # video 12 has no folder
    fr = annotate(root, "EgoSchema", [
        {"video_idx": "e1", "question": "What did c do?", "answer": "1", "question_idx": "q1",
         "option": ["A. walk.", "B. cook.", "C. read.", "D. swim.", "E. sing."]},
        {"video_idx": "e2", "question": "Why?", "answer": "0", "question_idx": "q2", "option": ["A. a."] * 5},
    ])
    frames(fr / "e1")
    (fr / "e2").mkdir(parents=True)  # empty
    fr = annotate(root, "MVBench", [
        {"question": "What happened?", "video": "v1.mp4", "candidates": ["opened", "closed"], "answer": "closed"},
        {"question": "Which?", "video": "v1.mp4", "candidates": ["a", "b"], "answer": "c"},
    ], sub="action_sequence")
    frames(fr / "action_sequence" / "v1.mp4")
    fr = annotate(root, "ActivityNetQA", [
        {"video_name": "abc", "question": "is it sunny", "answer": "yes", "question_id": "abc_0"},
        {"video_name": "abc", "question": "is it dark", "answer": "maybe", "question_id": "abc_1"},
        {"video_name": "abc", "question": "is it sunny", "answer": "yes", "question_id": "abc_0"},
    ])
    frames(fr / "v_abc", n=12)
    fr = annotate(root, "Video-MME", [
        {"question": "Q?", "videoID": "m1", "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
         "answer": "C", "question_id": "001-1", "domain": "d", "sub_category": "s"},
        {"question": "R?", "videoID": "m1", "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "E",
         "question_id": "001-2", "domain": "d", "sub_category": "s"},
    ])
    frames(fr / "m1")


def write_ret_sets(root):
    fr = annotate(root, "MSVD", [{"video_id": "s1", "video": "s1.avi", "caption": ["a cat", "a kitten"]},
                                 {"video_id": "s1", "video": "s1.avi", "caption": ["a pet"]},
                                 {"video_id": "s2", "video": "s2.avi", "caption": []}])
    frames(fr / "s1")
    frames(fr / "s2")
    frames(annotate(root, "DiDeMo", [{"video": "videos/123_abc.mp4", "caption": "a dog runs"}]) / "123_abc")
    frames(annotate(root, "YouCook2", [{"id": "y1", "video_path": "val/y1.mp4", "sentence": "cut the onion"}]) / "y1")
    frames(annotate(root, "VATEX", [{"videoID": "vx", "enCap": ["people dance", "a party"]}]) / "vx", n=9)
    fr = annotate(root, "MSR-VTT", [{"video_id": "video7020", "video": "video7020.mp4", "caption": "a man sings"},
                                    {"video_id": "video7021", "video": "video7021.mp4", "caption": "gone"}])
    frames(fr / "video7020")
    fr = annotate(root, "SmthSmthV2", [
        {"video_id": 5, "pos_text": "Pushing something", "neg_text": ["Pulling something", "Pushing something"]},
        {"video_id": 6, "pos_text": "Dropping something", "neg_text": ["Pulling something"]},
    ])
    frames(fr / "5")
    frames(fr / "6")


def write_moment_sets(root):
    fr = annotate(root, "Charades-STA", [{"query": "a person opens a door", "video_path": "videos/AB12.mp4"},
                                         {"query": "sits", "video_path": "CD34.mp4"}])
    for clip in ("query", "negative_1", "positive_0", "negative_0"):
        frames(fr / "AB12" / clip, n=10 if clip == "query" else 2)
    frames(fr / "CD34" / "query")
    frames(fr / "CD34" / "negative_0")  # no positive
    clip = {"output_path": "clips/p1.mp4"}, {"output_path": "clips/n1.mp4"}
    fr = annotate(root, "MomentSeeker", [
        {"query": "the jump", "input_frames": "src/v9.mp4", "positive_frames": [clip[0]], "negative_frames": [clip[1]]},
        {"query": "the hat", "input_frames": "img7.jpg", "positive_frames": [clip[0]], "negative_frames": []},
        {"query": "the end", "input_frames": "", "positive_frames": [clip[1]], "negative_frames": [clip[0]]},
        {"query": "nothing", "input_frames": "", "positive_frames": [], "negative_frames": [clip[0]]},
    ])
    frames(fr / "video_frames" / "src_v9", n=11)
    frames(fr / "video_frames" / "clips_p1", n=10)
    frames(fr / "video_frames" / "clips_n1", n=2, colour=(0, 0, 200))
    (fr / "query_img7.jpg").write_bytes(jpeg((0, 90, 0)))


@pytest.fixture(scope="module")
def normalized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2video")
    root = tmp / "raw" / "MMEB-V2"
    for write in (write_qa_sets, write_ret_sets, write_moment_sets):
        write(root)
    counts = normalize_v2(tmp / "raw", tmp / "norm", tmp / "rejects",
                          section("normalize", workers=1, frames_per_video=8))
    out = tmp / "norm" / "eval_v2"

    def read(name, table="queries"):
        return pq.read_table(out / name / f"{table}.parquet").to_pylist()

    return counts, read


def corpus_text(read, name):
    return {c["candidate_id"]: c["candidate"]["raw"] for c in read(name, "corpus")}


def test_video_qa_inputs(normalized):
    counts, read = normalized
    nextqa = read("NExTQA")
    assert [q["query_id"] for q in nextqa] == ["11/0"]
    assert nextqa[0]["query"]["raw"] == (QA + "what does the man do\nOptions:\n(A) run\n(B) jump\n(C) sit\n(D) eat\n"
                                         "(E) sleep")
    assert nextqa[0]["candidates"] == ["run", "jump", "sit", "eat", "sleep"]
    assert nextqa[0]["relevant"] == [{"candidate_id": "sit", "grade": 1.0}]
    assert counts["NExTQA"]["rejected_by_reason"] == {"queries/answer_not_in_options": 1,
                                                      "queries/duplicate_query_id": 1, "queries/frames_missing": 1}
    ego = read("EgoSchema")[0]
    assert ego["query"]["raw"] == QA + "What did c do?A. walk. B. cook. C. read. D. swim. E. sing."
    assert ego["relevant"][0]["candidate_id"] == "B. cook." and corpus_text(read, "EgoSchema")["B. cook."] == "cook"
    assert counts["EgoSchema"]["rejected_by_reason"] == {"queries/frames_empty": 1}
    mv = read("MVBench")
    assert mv[0]["query"]["raw"] == QA + "What happened?\nOptions:\n(A) opened\n(B) closed"
    assert mv[0]["candidates"] == ["(A) opened", "(B) closed"] and mv[0]["relevant"][0]["candidate_id"] == "(B) closed"
    assert counts["MVBench"]["rejected_by_reason"] == {"queries/answer_not_in_options": 1}  # VLM2Vec: "(@) c"
    anet = read("ActivityNetQA")
    assert anet[0]["query"]["raw"] == QA + "is it sunny? (A) yes; (B) no."
    assert anet[0]["candidates"] == ["yes", "no"] and len(anet[0]["query"]["video"]) == 8
    assert anet[0]["query"]["frames_available"] == 12
    assert counts["ActivityNetQA"]["rejected_by_reason"] == {"queries/answer_not_in_options": 1,
                                                             "queries/duplicate_query_id": 1}
    mme = read("Video-MME")[0]
    assert mme["query"]["raw"] == QA + "Q?\nA. One.\nB. Two.\nC. Three.\nD. Four."
    assert mme["relevant"][0]["candidate_id"] == "C. Three." and corpus_text(read, "Video-MME")["C. Three."] == "Three"
    assert counts["Video-MME"]["rejected_by_reason"] == {"queries/answer_not_in_options": 1}
    assert {read(n)[0]["eval_type"] for n in ("NExTQA", "EgoSchema", "MVBench", "ActivityNetQA")} == {"local"}


def test_video_retrieval_inputs(normalized):
    counts, read = normalized
    msvd = read("MSVD")
    assert [q["query"]["raw"] for q in msvd] == [
        "Find the video snippet that corresponds to the given summary: a cat",
        "Find the video snippet that corresponds to the given summary: a pet"]
    assert [q["relevant"][0]["candidate_id"] for q in msvd] == ["s1", "s1"] and msvd[0]["eval_type"] == "global"
    assert corpus_text(read, "MSVD") == {"s1": TARGET}  # one video, stored once
    assert counts["MSVD"]["rejected_by_reason"] == {"queries/no_caption": 1} and counts["MSVD"]["short_videos"] == 1
    assert read("DiDeMo")[0]["relevant"][0]["candidate_id"] == "123_abc"
    assert read("DiDeMo")[0]["query"]["raw"] == "Find a video that includes the following described scenes: a dog runs"
    assert read("YouCook2")[0]["query"]["raw"] == ("Find a video that demonstrates the following action while "
                                                   "making a recipe: cut the onion")
    assert read("VATEX")[0]["query"]["raw"] == "Select a video that fits the description provided: people dance"
    assert len(read("VATEX", "corpus")[0]["candidate"]["video"]) == 8
    assert read("MSR-VTT")[0]["query"]["raw"] == "Find a video that contains the following visual content: a man sings"
    assert counts["MSR-VTT"]["rejected_by_reason"] == {"queries/frames_missing": 1}
    ssv2 = read("SmthSmthV2")
    assert ssv2[0]["query"]["raw"] == ("<|video_1|> What actions or object interactions are being performed by the "
                                       "person in the video?")
    assert ssv2[0]["candidates"] == ["Pulling something", "Pushing something"] and ssv2[0]["query_id"] == "5"
    assert counts["SmthSmthV2"]["rejected_by_reason"] == {"queries/answer_not_in_options": 1}


def test_moment_retrieval_inputs(normalized):
    counts, read = normalized
    cha = read("Charades-STA")
    folder = "video-tasks/frames/video_mret/Charades_STA/AB12"
    assert cha[0]["query"]["raw"] == ("<|video_1|> Find the clip that corresponds to the described scene in the "
                                      "given video: a person opens a door")
    assert cha[0]["candidates"] == [f"{folder}/negative_0", f"{folder}/negative_1", f"{folder}/positive_0"]
    assert cha[0]["relevant"] == [{"candidate_id": f"{folder}/positive_0", "grade": 1.0}]
    assert len(cha[0]["query"]["video"]) == 8 and corpus_text(read, "Charades-STA")[f"{folder}/positive_0"] == TARGET
    assert counts["Charades-STA"]["rejected_by_reason"] == {"queries/no_positive": 1}
    ms = read("MomentSeeker")
    clips = ["video-tasks/frames/video_mret/MomentSeeker/video_frames/clips_p1",
             "video-tasks/frames/video_mret/MomentSeeker/video_frames/clips_n1"]
    assert [q["query"]["raw"] for q in ms] == [
        "<|video_1|> Find the clip that corresponds to the given sentence and video segment: the jump",
        "<|image_1|> Select the video clip that aligns with the given text and image: the hat",
        "Find the clip that corresponds to the given text: the end"]
    assert len(ms[0]["query"]["video"]) == 11  # MomentSeeker keeps every frame
    assert ms[1]["query"]["image"]["path"] == "video-tasks/frames/video_mret/MomentSeeker/query_img7.jpg"
    assert [q["candidates"] for q in ms] == [clips, clips[:1], clips[::-1]]
    assert [[r["candidate_id"] for r in q["relevant"]] for q in ms] == [clips[:1], clips[:1], clips[1:]]
    texts = {c["candidate_id"]: (c["candidate"]["raw"], len(c["candidate"]["video"]))
             for c in read("MomentSeeker", "corpus")}
    assert texts == {clips[0]: ("<|video_1|> Understand the content of the provided video clip.", 10),
                     clips[1]: ("<|video_1|> Understand the content of the provided video clip.", 2)}
    assert counts["MomentSeeker"]["rejected_by_reason"] == {"queries/no_positive": 1}


def test_a_subsampled_task_keeps_its_first_rows(tmp_path, monkeypatch):
    from pipelines.download_v2 import count_dataset

    monkeypatch.setitem(mmeb_v2.FIRST_ROWS, "SmthSmthV2", 2)  # VLM2Vec's yaml: the first 1000
    root = tmp_path / "raw" / "MMEB-V2"
    labels = ["Pushing something", "Pulling something"]
    fr = annotate(root, "SmthSmthV2", [{"video_id": v, "pos_text": labels[v % 2], "neg_text": labels}
                                       for v in range(3)])
    for v in range(3):
        frames(fr / str(v))
    assert count_dataset(root, mmeb_v2.TASKS["SmthSmthV2"]) == (2, [])
    counts = normalize_v2(tmp_path / "raw", tmp_path / "norm", tmp_path / "rejects",
                          section("normalize", workers=1, frames_per_video=8))["SmthSmthV2"]
    assert (counts["queries"], counts["not_sampled"], counts["rejected"]) == (2, 1, 0)
