"""Registry of MMEB-V2: its 78 scored tasks (36 image, 18 video, 24 visual-document), as VLM2Vec's
evaluation code defines them.

Facts from TIGER-AI-Lab/VLM2Vec at commit 6e1e1d4: the task lists and headline metrics of
``experiments/report_score_v2.py``, the Hub paths of ``src/constant/dataset_hf_path.py``, the parsers,
roots and eval types of ``experiments/public/eval/{image,video,visdoc}.yaml``, and the query counts
(``num_data``) of the published score files (``experiments/public/all_scores/<version>/``).

A task's ``name`` is the key the score files and the leaderboard use (``<name>_score.json``); the
loader's own name differs for K700 (``Kinetics-700``). ``eval_type`` says what a query is ranked
against: ``local``, its own candidate list; ``global``, the whole deduplicated candidate pool of the
dataset (every label, every video, every page). The headline metric is ``hit@1`` for image and video
tasks and ``ndcg_linear@5`` for visual documents; a modality's score is the plain mean over its
tasks, and the overall score the plain mean over all 78.

``num_data`` is the number of queries the published score files report, the count a complete
download must reach; ``score_version`` names the score-file version that scored the same data (see
``pipelines.mmeb_v2_published``). The V1 registry (``pipelines.mmeb``) is unchanged: V2's image tasks
are V1's 36 datasets, with V2's loaders and 1,000 queries each.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines import mmeb_v2_published as published

MODALITIES = ("image", "video", "visdoc")
HEADLINE_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
# Meta-tasks in the paper's column order; names are unique across modalities.
META_TASKS = {
    "image": ("I-CLS", "I-QA", "I-RET", "I-GD"),
    "video": ("V-CLS", "V-QA", "V-RET", "V-MRET"),
    "visdoc": ("VDRv1", "VDRv2", "VR", "OOD"),
}
EVAL_TYPES = ("local", "global")

IMAGE_REPO = "ziyjiang/MMEB_Test_Instruct"  # every image task: config = task name, split "test"
CURRENT_SCORES = "v2.0.1"
PAGE_FIXED_SCORES = "v2.1-baselines-visdoc-page-fixed"
# `report_score_v2.py` (since 6e1e1d4) writes these two visdoc keys with a "-fixed" suffix.
LEADERBOARD_RENAMES = {"ViDoSeek-page": "ViDoSeek-page-fixed", "MMLongBench-page": "MMLongBench-page-fixed"}
LOADER_NAMES = {"K700": "Kinetics-700"}  # the yaml's dataset_name where it differs from the score key


@dataclass(frozen=True)
class V2Task:
    name: str  # score-file / leaderboard key
    modality: str  # one of MODALITIES
    meta_task: str  # one of META_TASKS[modality]
    parser: str  # VLM2Vec's dataset_parser (the loader family)
    eval_type: str  # "local" or "global"
    hub_repo: str
    hub_config: str | None  # Hub config (subset); None = the default one
    hub_split: str
    root: str  # image_root (image, visdoc) or frame_root (video) under the MMEB-V2 folder
    num_data: int  # queries in the published score files of `score_version`
    score_version: str = CURRENT_SCORES
    loader_name: str | None = None  # the loader's dataset_name where it differs from `name`
    language: str | None = None  # queries kept by their "language" column (None: all)

    @property
    def headline_metric(self) -> str:
        return HEADLINE_METRIC[self.modality]

    @property
    def published(self) -> dict[str, float]:
        """The headline score (fraction) of each reference model on this task's current data."""
        return dict(zip(published.MODELS, published.HEADLINE[self.score_version][self.name]))


def _image(name: str, meta: str, parser: str) -> V2Task:
    return V2Task(name, "image", meta, parser, "local", IMAGE_REPO, name, "test", "image-tasks/", 1000)


def _video(name, meta, parser, eval_type, repo, config, split, root, n) -> V2Task:
    return V2Task(name, "video", meta, parser, eval_type, repo, config, split, f"video-tasks/frames/{root}", n,
                  loader_name=LOADER_NAMES.get(name))


def _visdoc(name, meta, parser, repo, split, root, n, version=CURRENT_SCORES) -> V2Task:
    return V2Task(name, "visdoc", meta, parser, "global", repo, None, split, f"visdoc-tasks/{root}", n,
                  score_version=version)


_IMAGE = [
    *(_image(n, "I-CLS", "image_cls") for n in (
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
        "ImageNet-R", "ObjectNet", "Country211")),
    *(_image(n, "I-QA", "image_qa") for n in (
        "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
        "GQA", "TextVQA")),
    _image("VisDial", "I-RET", "image_t2i"),
    _image("CIRR", "I-RET", "image_i2i_vg"),
    _image("VisualNews_t2i", "I-RET", "image_t2i"),
    _image("VisualNews_i2t", "I-RET", "image_i2t"),
    _image("MSCOCO_t2i", "I-RET", "image_t2i"),
    _image("MSCOCO_i2t", "I-RET", "image_i2t"),
    _image("NIGHTS", "I-RET", "image_i2i_vg"),
    _image("WebQA", "I-RET", "image_t2i"),
    _image("FashionIQ", "I-RET", "image_i2i_vg"),
    _image("Wiki-SS-NQ", "I-RET", "image_t2i"),
    _image("OVEN", "I-RET", "image_i2i_vg"),
    _image("EDIS", "I-RET", "image_t2i"),
    *(_image(n, "I-GD", "image_i2i_vg") for n in ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing")),
]

_VIDEO_ROWS = (  # (name, meta-task, parser, eval type, Hub repo, config, split, frame folder, queries)
    ("K700", "V-CLS", "video_classification", "global", "VLM2Vec/Kinetics-700", None, "test", "video_cls/K700", 1000),
    ("SmthSmthV2", "V-CLS", "ssv2", "local", "VLM2Vec/SmthSmthV2", None, "test", "video_cls/SSv2", 1000),
    ("HMDB51", "V-CLS", "video_classification", "global", "VLM2Vec/HMDB51", None, "test", "video_cls/HMDB51", 1000),
    ("UCF101", "V-CLS", "video_classification", "global", "VLM2Vec/UCF101", None, "test", "video_cls/UCF101", 1000),
    ("Breakfast", "V-CLS", "video_classification", "global", "VLM2Vec/Breakfast", None, "test",
     "video_cls/Breakfast", 433),
    ("MVBench", "V-QA", "mvbench", "local", "VLM2Vec/MVBench", None, "train", "video_qa/MVBench", 4000),
    ("Video-MME", "V-QA", "videomme", "local", "VLM2Vec/Video-MME", None, "test", "video_qa/Video-MME", 2700),
    ("NExTQA", "V-QA", "nextqa", "local", "VLM2Vec/NExTQA", "MC", "test", "video_qa/NExTQA", 8564),
    ("EgoSchema", "V-QA", "egoschema", "local", "VLM2Vec/EgoSchema", "Subset", "test", "video_qa/EgoSchema", 500),
    ("ActivityNetQA", "V-QA", "activitynetqa", "local", "VLM2Vec/ActivityNetQA", None, "test",
     "video_qa/ActivityNetQA", 1000),
    ("DiDeMo", "V-RET", "didemo", "global", "VLM2Vec/DiDeMo", None, "test", "video_ret/DiDeMo", 1004),
    ("MSR-VTT", "V-RET", "msrvtt", "global", "VLM2Vec/MSR-VTT", "test_1k", "test", "video_ret/MSR-VTT", 1000),
    ("MSVD", "V-RET", "msvd", "global", "VLM2Vec/MSVD", None, "test", "video_ret/MSVD", 670),
    ("VATEX", "V-RET", "vatex", "global", "VLM2Vec/VATEX", None, "test", "video_ret/VATEX", 4478),
    # VLM2Vec/YouCook2 is commented out upstream ("HF version compatibility issue")
    ("YouCook2", "V-RET", "youcook2", "global", "lmms-lab/YouCook2", None, "val", "video_ret/YouCook2", 3179),
    ("QVHighlight", "V-MRET", "moment_retrieval", "local", "VLM2Vec/QVHighlight", None, "test",
     "video_mret/QVHighlight", 1083),
    ("Charades-STA", "V-MRET", "moment_retrieval", "local", "VLM2Vec/Charades-STA", None, "test",
     "video_mret/Charades_STA", 727),
    # the deduplicated set (CHANGELOG 2025-07-31); the old 1,800-query set is `MomentSeeker_1k8`
    ("MomentSeeker", "V-MRET", "momentseeker", "local", "VLM2Vec/MomentSeeker", None, "test",
     "video_mret/MomentSeeker", 1602),
)
_VIDEO = [_video(*row) for row in _VIDEO_ROWS]
# the yaml's num_sample_per_subset: VLM2Vec reads only the first rows of these annotation splits
FIRST_ROWS = {"SmthSmthV2": 1000}

_VIDORE_V1 = (  # (task suffix, Hub repo suffix, queries)
    ("arxivqa", "arxivqa_test_subsampled_beir", 500),
    ("docvqa", "docvqa_test_subsampled_beir", 451),
    ("infovqa", "infovqa_test_subsampled_beir", 494),
    ("tabfquad", "tabfquad_test_subsampled_beir", 280),
    ("tatdqa", "tatdqa_test_beir", 1646),
    ("shiftproject", "shiftproject_test_beir", 100),
    ("syntheticDocQA_artificial_intelligence", "syntheticDocQA_artificial_intelligence_test_beir", 100),
    ("syntheticDocQA_energy", "syntheticDocQA_energy_test_beir", 100),
    ("syntheticDocQA_government_reports", "syntheticDocQA_government_reports_test_beir", 100),
    ("syntheticDocQA_healthcare_industry", "syntheticDocQA_healthcare_industry_test_beir", 100),
)
_VIDORE_V2 = (  # scored with every language (no filter): the "_multilingual" keys
    ("ViDoRe_esg_reports_human_labeled_v2", "esg_reports_human_labeled_v2", "esg_reports_human_labeled_v2", 52),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "biomedical_lectures_v2",
     "biomedical_lectures_v2_multilingual", 640),
    ("ViDoRe_economics_reports_v2_multilingual", "economics_reports_v2", "economics_reports_v2_multilingual", 232),
    ("ViDoRe_esg_reports_v2_multilingual", "esg_reports_v2", "esg_reports_v2_multilingual", 228),
)
_VISRAG = (("ArxivQA", 816), ("ChartQA", 63), ("MP-DocVQA", 591), ("SlideVQA", 556), ("InfoVQA", 718),
           ("PlotQA", 863))

_VISDOC = [
    *(_visdoc(f"ViDoRe_{t}", "VDRv1", "vidore", f"vidore/{repo}", "test", f"ViDoRe_{t}", n)
      for t, repo, n in _VIDORE_V1),
    *(_visdoc(t, "VDRv2", "vidore", f"vidore/{repo}", "test", root, n) for t, repo, root, n in _VIDORE_V2),
    *(_visdoc(f"VisRAG_{t}", "VR", "visrag", f"openbmb/VisRAG-Ret-Test-{t}", "train", f"VisRAG_{t}", n)
      for t, n in _VISRAG),
    _visdoc("ViDoSeek-page", "OOD", "vidore", "VLM2Vec/ViDoSeek-page-fixed", "test", "ViDoSeek-page", 1142,
            version=PAGE_FIXED_SCORES),
    _visdoc("ViDoSeek-doc", "OOD", "vidore", "VLM2Vec/ViDoSeek", "test", "ViDoSeek-doc", 1142),
    _visdoc("MMLongBench-page", "OOD", "vidore", "VLM2Vec/MMLongBench-page-fixed", "test", "MMLongBench-page", 838,
            version=PAGE_FIXED_SCORES),
    _visdoc("MMLongBench-doc", "OOD", "vidore", "VLM2Vec/MMLongBench-doc", "test", "MMLongBench-doc", 838),
]

TASKS: dict[str, V2Task] = {t.name: t for t in (*_IMAGE, *_VIDEO, *_VISDOC)}


def tasks(modality: str | None = None, meta_task: str | None = None) -> list[V2Task]:
    """The tasks of one modality and/or meta-task, in report order (all 78 with no argument)."""
    if modality is not None and modality not in MODALITIES:
        raise KeyError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    return [t for t in TASKS.values()
            if (modality is None or t.modality == modality) and (meta_task is None or t.meta_task == meta_task)]


def lookup(name: str) -> V2Task:
    """The task of a score-file key; also accepts the leaderboard's "-fixed" names."""
    name = {v: k for k, v in LEADERBOARD_RENAMES.items()}.get(name, name)
    if name not in TASKS:
        raise KeyError(f"unknown MMEB-V2 task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def leaderboard_key(name: str) -> str:
    """The key `report_score_v2.py` writes for a task in the leaderboard JSON."""
    return LEADERBOARD_RENAMES.get(name, name)


# --- synthetic stand-ins -------------------------------------------------------------------------------
# The offline sets of `pipelines.sources.synthetic` in MMEB-V2's layout, each standing in for one
# loader family: Syn-ViDoRe for the ViDoRe sets (BEIR layout, graded qrels, the whole corpus ranked),
# Syn-VideoCLS for HMDB51 (its instruction; every label ranked), Syn-VideoMC for SSv2, Syn-VideoQA for
# Video-MME, Syn-VideoRET for MSR-VTT, Syn-MomentRET for QVHighlight, Syn-MomentSeeker for
# MomentSeeker; Syn-ImageCLS, Syn-ImageT2I and Syn-ImageVG for the image_cls, image_t2i and
# image_i2i_vg loaders. `num_data` is what the generator writes with its default sizes. They are
# scored and aggregated like registry tasks but never enter the official groups, the 78 or the
# leaderboard's task keys.
SYNTHETIC: dict[str, V2Task] = {t.name: t for t in (
    V2Task("Syn-ViDoRe", "visdoc", "VDRv1", "vidore", "global", "", None, "test", "visdoc-tasks/Syn-ViDoRe", 9),
    V2Task("Syn-VideoCLS", "video", "V-CLS", "video_classification", "global", "", None, "test",
           "video-tasks/frames/video_cls/Syn-VideoCLS", 14, loader_name="HMDB51"),
    # `pipelines.sources.synthetic.video_families`
    V2Task("Syn-VideoMC", "video", "V-CLS", "ssv2", "local", "", None, "test",
           "video-tasks/frames/video_cls/Syn-VideoMC", 7, loader_name="SmthSmthV2"),
    V2Task("Syn-VideoQA", "video", "V-QA", "videomme", "local", "", None, "test",
           "video-tasks/frames/video_qa/Syn-VideoQA", 6, loader_name="Video-MME"),
    V2Task("Syn-VideoRET", "video", "V-RET", "msrvtt", "global", "", None, "test",
           "video-tasks/frames/video_ret/Syn-VideoRET", 7, loader_name="MSR-VTT"),
    V2Task("Syn-MomentRET", "video", "V-MRET", "moment_retrieval", "local", "", None, "test",
           "video-tasks/frames/video_mret/Syn-MomentRET", 3, loader_name="QVHighlight"),
    V2Task("Syn-MomentSeeker", "video", "V-MRET", "momentseeker", "local", "", None, "test",
           "video-tasks/frames/video_mret/Syn-MomentSeeker", 3),
    # `pipelines.sources.synthetic.image_v2`
    V2Task("Syn-ImageCLS", "image", "I-CLS", "image_cls", "local", "", None, "test", "image-tasks/", 8),
    V2Task("Syn-ImageT2I", "image", "I-RET", "image_t2i", "local", "", None, "test", "image-tasks/", 8),
    V2Task("Syn-ImageVG", "image", "I-GD", "image_i2i_vg", "local", "", None, "test", "image-tasks/", 8),
)}

# The raw layout the pipeline reads (data/raw/MMEB-V2/): one folder per dataset holding its Hub repo,
# beside the frame and image roots; the loader families wired into normalize so far.
RAW_FOLDER = "MMEB-V2"
LAYOUT_FOLDERS = ("video-tasks", "visdoc-tasks", "image-tasks")  # frame and image roots, not datasets
BEIR_PARSERS = ("vidore", "visrag")
ANNOTATED_VIDEO_PARSERS = ("video_classification",)  # video_id + pos_text rows, one frame folder each
# the image and video families: annotation rows (+ images or frame folders), all read by normalize
ROW_PARSERS = tuple(sorted({t.parser for t in TASKS.values() if t.modality != "visdoc"}))


def known(name: str) -> V2Task:
    """A registry task or a synthetic stand-in, by name."""
    return SYNTHETIC[name] if name in SYNTHETIC else lookup(name)
