"""Registry of the datasets this toolkit knows: the real MMEB (train and eval) and the embedded
synthetic miniature MMEB.

Facts from the MMEB paper and the MMEB-train / MMEB-eval dataset repos. Every other module asks this registry for a
dataset's meta-task, distribution (IND/OOD) and modalities instead of hard-coding them.

Names are exactly the Hub config names (note `ImageNet_1K` in MMEB-train but `ImageNet-1K` in
MMEB-eval). Synthetic datasets are prefixed `Syn-`; they follow the same layout and conventions as the
real ones and are described in `pipelines/sources/synthetic.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

META_TASKS = ("classification", "vqa", "retrieval", "grounding")
DISTRIBUTIONS = ("IND", "OOD")

TRAIN_SPLITS = ("original", "diverse_instruction")
EVAL_SPLIT = "test"

HUB_TRAIN_REPO = "TIGER-Lab/MMEB-train"
HUB_EVAL_REPO = "TIGER-Lab/MMEB-eval"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    meta_task: str  # one of META_TASKS
    distribution: str  # IND or OOD
    query: str  # modality of the query side: "I", "T" or "I+T"
    target: str  # modality of the target side
    synthetic: bool = False


def _d(name, meta, dist, q, t, synthetic=False):
    return DatasetInfo(name, meta, dist, q, t, synthetic)


# --- real MMEB -------------------------------------------------------------------------------
MMEB_TRAIN: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        _d("ImageNet_1K", "classification", "IND", "I", "T"),
        _d("N24News", "classification", "IND", "I+T", "T"),
        _d("HatefulMemes", "classification", "IND", "I", "T"),
        _d("VOC2007", "classification", "IND", "I", "T"),
        _d("SUN397", "classification", "IND", "I", "T"),
        _d("OK-VQA", "vqa", "IND", "I+T", "T"),
        _d("A-OKVQA", "vqa", "IND", "I+T", "T"),
        _d("DocVQA", "vqa", "IND", "I+T", "T"),
        _d("InfographicsVQA", "vqa", "IND", "I+T", "T"),
        _d("ChartQA", "vqa", "IND", "I+T", "T"),
        _d("Visual7W", "vqa", "IND", "I+T", "T"),
        _d("VisDial", "retrieval", "IND", "T", "I"),
        _d("CIRR", "retrieval", "IND", "I+T", "I"),
        _d("VisualNews_t2i", "retrieval", "IND", "T", "I"),
        _d("VisualNews_i2t", "retrieval", "IND", "I", "T"),
        _d("MSCOCO_t2i", "retrieval", "IND", "T", "I"),
        _d("MSCOCO_i2t", "retrieval", "IND", "I", "T"),
        _d("NIGHTS", "retrieval", "IND", "I", "I"),
        _d("WebQA", "retrieval", "IND", "T", "I+T"),
        _d("MSCOCO", "grounding", "IND", "I+T", "I"),
    ]
}

MMEB_EVAL: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        _d("ImageNet-1K", "classification", "IND", "I", "T"),
        _d("N24News", "classification", "IND", "I+T", "T"),
        _d("HatefulMemes", "classification", "IND", "I", "T"),
        _d("VOC2007", "classification", "IND", "I", "T"),
        _d("SUN397", "classification", "IND", "I", "T"),
        _d("Place365", "classification", "OOD", "I", "T"),
        _d("ImageNet-A", "classification", "OOD", "I", "T"),
        _d("ImageNet-R", "classification", "OOD", "I", "T"),
        _d("ObjectNet", "classification", "OOD", "I", "T"),
        _d("Country211", "classification", "OOD", "I", "T"),
        _d("OK-VQA", "vqa", "IND", "I+T", "T"),
        _d("A-OKVQA", "vqa", "IND", "I+T", "T"),
        _d("DocVQA", "vqa", "IND", "I+T", "T"),
        _d("InfographicsVQA", "vqa", "IND", "I+T", "T"),
        _d("ChartQA", "vqa", "IND", "I+T", "T"),
        _d("Visual7W", "vqa", "IND", "I+T", "T"),
        _d("ScienceQA", "vqa", "OOD", "I+T", "T"),
        _d("VizWiz", "vqa", "OOD", "I+T", "T"),
        _d("GQA", "vqa", "OOD", "I+T", "T"),
        _d("TextVQA", "vqa", "OOD", "I+T", "T"),
        _d("VisDial", "retrieval", "IND", "T", "I"),
        _d("CIRR", "retrieval", "IND", "I+T", "I"),
        _d("VisualNews_t2i", "retrieval", "IND", "T", "I"),
        _d("VisualNews_i2t", "retrieval", "IND", "I", "T"),
        _d("MSCOCO_t2i", "retrieval", "IND", "T", "I"),
        _d("MSCOCO_i2t", "retrieval", "IND", "I", "T"),
        _d("NIGHTS", "retrieval", "IND", "I", "I"),
        _d("WebQA", "retrieval", "IND", "T", "I+T"),
        _d("FashionIQ", "retrieval", "OOD", "I+T", "I"),
        _d("Wiki-SS-NQ", "retrieval", "OOD", "T", "I"),
        _d("OVEN", "retrieval", "OOD", "I+T", "I+T"),
        _d("EDIS", "retrieval", "OOD", "T", "I+T"),
        _d("MSCOCO", "grounding", "IND", "I+T", "I"),
        _d("RefCOCO", "grounding", "OOD", "I+T", "I"),
        _d("RefCOCO-Matching", "grounding", "OOD", "I+T", "I+T"),
        _d("Visual7W-Pointing", "grounding", "OOD", "I+T", "I"),
    ]
}

# --- the embedded synthetic miniature MMEB ----------------------------------------------------
# IND datasets have a train split (and an eval split); OOD datasets are eval-only and test unseen
# attribute combinations or unseen instructions. Each mimics one or more real MMEB datasets.
SYNTHETIC: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        # mimics ImageNet_1K: "<|image_1|>\nRepresent the given image for classification\n" -> label
        _d("Syn-ShapeCLS", "classification", "IND", "I", "T", True),
        # mimics N24News: image + caption -> domain label, with a hard-negative label
        _d("Syn-NewsCLS", "classification", "IND", "I+T", "T", True),
        # OOD: colour/shape combinations held out of every train split
        _d("Syn-ShapeCLS-Unseen", "classification", "OOD", "I", "T", True),
        # mimics OK-VQA: question about colours/shapes/counts -> answer, with a hard-negative answer
        _d("Syn-ShapeVQA", "vqa", "IND", "I+T", "T", True),
        # mimics DocVQA/TextVQA: rendered short words -> the word asked for
        _d("Syn-TextVQA", "vqa", "IND", "I+T", "T", True),
        # OOD: VQA with instructions never seen in training
        _d("Syn-ShapeVQA-NewInst", "vqa", "OOD", "I+T", "T", True),
        # mimics VisDial: "Q:..\nA:.." dialogue -> image, with a hard-negative image
        _d("Syn-Dialog_t2i", "retrieval", "IND", "T", "I", True),
        # mimics MSCOCO_t2i / MSCOCO_i2t
        _d("Syn-Caption_t2i", "retrieval", "IND", "T", "I", True),
        _d("Syn-Caption_i2t", "retrieval", "IND", "I", "T", True),
        # mimics CIRR: image + modification text -> modified image
        _d("Syn-CIRR", "retrieval", "IND", "I+T", "I", True),
        # mimics WebQA: text-only query with the stray "<|image_1|>\n" -> image + text
        _d("Syn-WebQA", "retrieval", "IND", "T", "I+T", True),
        # OOD: mimics NIGHTS, image -> similar image (no I->I retrieval in train)
        _d("Syn-NIGHTS", "retrieval", "OOD", "I", "I", True),
        # mimics MSCOCO visual grounding: image + "object labeled as ..." -> crop (file names with spaces)
        _d("Syn-Grounding", "grounding", "IND", "I+T", "I", True),
        # OOD: mimics RefCOCO, referring expressions by position -> crop
        _d("Syn-RefGrounding", "grounding", "OOD", "I+T", "I", True),
    ]
}

SYNTHETIC_TRAIN = [n for n, d in SYNTHETIC.items() if d.distribution == "IND"]
SYNTHETIC_EVAL = list(SYNTHETIC)


def lookup(name: str, split: str) -> DatasetInfo:
    """Info for a dataset name as it appears in a train (`original`/`diverse_instruction`) or eval
    (`test`) split. Raises KeyError with the known names on an unknown dataset."""
    tables = (SYNTHETIC, MMEB_EVAL) if split == EVAL_SPLIT else (SYNTHETIC, MMEB_TRAIN)
    for table in tables:
        if name in table:
            return table[name]
    known = sorted(set().union(*tables))
    raise KeyError(f"unknown dataset {name!r} for split {split!r}; known: {', '.join(known)}")


def resolve_subsets(selection, available: list[str]) -> list[str]:
    """`all` (or None) -> every available subset, else the listed names, checked: each must be
    available and listed once (a repeated dataset would count twice in every average)."""
    if selection in (None, "all", ["all"]):
        return sorted(available)
    names = [selection] if isinstance(selection, str) else list(selection)
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"unknown subsets {missing}; available: {sorted(available)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"subsets listed more than once: {repeated}")
    return names
