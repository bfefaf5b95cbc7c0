"""VLM2Vec-V2's training sources beyond MMEB-train: which sets, where their bytes live, and the exact
input strings its training loaders build (TIGER-AI-Lab/VLM2Vec ``src/data/dataset/vidore_dataset.py``,
``visrag_dataset.py``, ``llavahound_dataset_caption.py``, ``llavahound_dataset_qa.py``, read through
``experiments/public/train/train_alltasks.yaml``).

    spec = SETS["visrag-indomain"]
    visrag_query("What is ...?", "ChartQA"), visrag_target("ChartQA")

Five training sets from three Hub repos, each repo a folder under ``data/raw/V2-train/`` in its Hub
layout (`SOURCES`):

    colpali_train_set          vidore/colpali_train_set, data/train-*.parquet: page image + question
                               -> answer text (the row's ``prompt`` is ignored, as the loader does)
    visrag-indomain            openbmb/VisRAG-Ret-Train-In-domain-data, data/train-*.parquet: a query
                               with its source's prompt -> the page with its source's target prompt
    video_caption_300k         ShareGPTVideo/train_video_and_instruction, video_caption_300k.jsonl:
                               video + request -> caption (``data_mode: caption_retrieval``)
    video_caption_300k-video   the same file: caption -> video (``data_mode: video_retrieval``)
    video_qa_240k              the same repo, video_240k_caption_15k.jsonl (read whole, as the yaml
                               names it): video + question -> answer

Video frames are the repo's ``train_300k/<video>/`` folders (its ``train_300k/*.tar.gz`` extracted in
place). Strings carry this project's placeholders (`pipelines.schema.IMAGE_TOKEN`, ``VIDEO_TOKEN``)
where VLM2Vec writes the backbone's own token. The set names are the yaml's keys, so a
``train.mixture`` copies its weights (`WEIGHTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.schema import IMAGE_TOKEN, VIDEO_TOKEN

RAW_FOLDER = "V2-train"  # under data/raw (and data.local_dir for source local)
FRAME_FOLDER = "train_300k"  # LLaVA-Hound's frame folders, under its repo folder
CAPTION_FILE = "video_instruction/train/sft/video_caption_300k.jsonl"
QA_FILE = "video_instruction/train/sft/video_240k_caption_15k.jsonl"
PAGES = "data/train-*.parquet"


@dataclass(frozen=True)
class Source:
    """One Hub repo: the folder it is placed in under V2-train/ and the archives extracted there."""

    folder: str
    repo: str
    archives: str | None = None  # pattern of tar archives extracted into the repo folder


@dataclass(frozen=True)
class TrainSet:
    name: str  # the yaml key: the dataset name under data/normalized/train and in train.mixture
    parser: str  # the yaml's dataset_parser
    source: str  # SOURCES key
    files: str  # the annotation files in the repo (a glob for parquet shards, a path for jsonl)
    modality: str  # "visdoc" | "video"
    meta_task: str  # "vqa" | "retrieval"
    mode: str = ""  # llavahound_caption's data_mode


SOURCES = {
    "colpali": Source("colpali_train_set", "vidore/colpali_train_set"),
    "visrag": Source("VisRAG-Ret-Train-In-domain-data", "openbmb/VisRAG-Ret-Train-In-domain-data"),
    "llavahound": Source("train_video_and_instruction", "ShareGPTVideo/train_video_and_instruction",
                         archives=f"{FRAME_FOLDER}/*.tar.gz"),
}

SETS = {s.name: s for s in (
    TrainSet("colpali_train_set", "vidore", "colpali", PAGES, "visdoc", "vqa"),
    TrainSet("visrag-indomain", "visrag", "visrag", PAGES, "visdoc", "retrieval"),
    TrainSet("video_caption_300k", "llavahound_caption", "llavahound", CAPTION_FILE, "video", "retrieval",
             "caption_retrieval"),
    TrainSet("video_caption_300k-video", "llavahound_caption", "llavahound", CAPTION_FILE, "video", "retrieval",
             "video_retrieval"),
    TrainSet("video_qa_240k", "llavahound_qa", "llavahound", QA_FILE, "video", "vqa"),
)}

# train_alltasks.yaml's weights of these sets (its MMEB-train subsets weigh 1 or 0.5 each)
WEIGHTS = {"colpali_train_set": 10, "visrag-indomain": 12, "video_caption_300k": 5, "video_caption_300k-video": 5,
           "video_qa_240k": 5}

# visrag_dataset.py: query_source2prompt / target_source2prompt, by the row's `source`
QUERY_PROMPTS = {
    "NeurIPS Papers": "This query is about a research paper from NeurIPS, a leading AI/ML conference. The document "
                      "contains technical discussions, methodologies, and findings. Identify relevant papers and "
                      "sections that address the query: ",
    "Textbooks": "This query is related to a college-level textbook, which provides structured explanations, "
                 "definitions, and examples. Find the most relevant concepts or explanations that address the query: ",
    "ICML Papers": "This query is about a research paper from ICML, a leading AI/ML conference. The document contains "
                   "theoretical insights, experiments, and applications. Identify relevant papers and sections that "
                   "best answer the query: ",
    "Manuallib": "This query pertains to a product manual, which contains detailed technical specifications, usage "
                 "instructions, and troubleshooting steps. Find the most relevant section that answers the query: ",
    "ArxivQA": "This query is related to retrieving a relevant figure from an ArXiv research paper. The retrieved "
               "figure should contain scientific plots, mathematical visualizations, or experimental results that "
               "best address the query: ",
    "ChartQA": "This query is related to retrieving a relevant chart that visually represents numerical or "
               "categorical data. The retrieved chart should contain bar graphs, line charts, or other visual "
               "elements necessary to analyze trends, compare values, or extract insights related to the query: ",
    "MP-DocVQA": "This query is related to retrieving a relevant page from a multi-page document, such as reports, "
                 "invoices, or research papers. The retrieved document should contain text, tables, or structured "
                 "information necessary to answer the query: ",
    "InfoVQA": "This query is related to retrieving an infographic that visually presents statistical or factual "
               "information using charts, icons, and structured layouts. The retrieved image should contain the "
               "necessary visual elements to provide the best context for answering the query: ",
    "PlotQA": "This query relates to retrieving a relevant plot or chart that visually represents numerical data. The "
              "retrieved figure should contain the necessary information to analyze trends, compare values, or "
              "extract key insights related to the query: ",
    "SlideVQA": "This query is related to retrieving a relevant presentation slide that visually presents structured "
                "information. The retrieved slide should contain the necessary text, charts, or graphics to provide "
                "the best answer to the query: ",
}
TARGET_PROMPTS = {
    "Textbooks": "A textbook page with structured educational content and explanations.",
    "ICML Papers": "A research paper from ICML, covering machine learning topics.",
    "NeurIPS Papers": "A research paper from NeurIPS on AI and ML topics.",
    "Manuallib": "A product manual page with technical specifications and instructions.",
    "InfoVQA": "An infographic with structured data, charts, and annotations.",
    "PlotQA": "A numerical data visualization, such as bar charts or line graphs.",
    "SlideVQA": "A presentation slide with text, bullet points, and diagrams.",
    "ArxivQA": "A figure from a research paper, including plots or experimental results.",
    "MP-DocVQA": "A page from a multi-page document with text or tables.",
    "ChartQA": "A statistical chart comparing values or analyzing trends.",
}
VRET_QUERY_PROMPT = "Find a video that contains the following visual content: "
VRET_TARGET_PROMPT = "Understand the content of the provided video: "
QA_QUERY_PROMPT = "Answer a question based on the content of a video. "


def _process_query(query: str, prompt: str, image_token: str) -> str:
    """visrag_dataset.process_query: prompt, query and token joined by single spaces, so an empty
    query leaves two spaces and an empty token a trailing one."""
    return f"{prompt} {query} {image_token}" if prompt else f"{query} {image_token}"


def colpali_query(query: str) -> str:
    """vidore_dataset.process_query with the prompt ignored: the token, a space, the question."""
    return f"{IMAGE_TOKEN} {query}"


def visrag_query(query: str, source: str) -> str:
    """The source's query prompt, the query and a trailing space (text only; an unknown source: no prompt)."""
    return _process_query(query, QUERY_PROMPTS.get(source, ""), "")


def visrag_target(source: str) -> str:
    """The source's target prompt, two spaces (the empty query between) and the page's image token."""
    return _process_query("", TARGET_PROMPTS.get(source, ""), IMAGE_TOKEN)


def llavahound_pair(spec: TrainSet, request: str, answer: str) -> tuple[str, str]:
    """(query, target) strings of a LLaVA-Hound row from its first two turns (``request`` with its
    ``<video>`` mark, ``answer``); the video goes with the side that holds VIDEO_TOKEN's place."""
    if spec.parser == "llavahound_qa":
        return QA_QUERY_PROMPT + request.replace("<video>", VIDEO_TOKEN), answer
    if spec.mode == "caption_retrieval":
        return request.replace("<video>", VIDEO_TOKEN), answer
    if spec.mode == "video_retrieval":
        return VRET_QUERY_PROMPT + answer, VRET_TARGET_PROMPT + VIDEO_TOKEN
    raise ValueError(f"{spec.name}: no LLaVA-Hound mode {spec.mode!r}")


def video_side(spec: TrainSet) -> str:
    """Which side carries the frames: the target for caption -> video, else the query."""
    return "target" if spec.mode == "video_retrieval" else "query"
