"""Published MMEB-V2 scores of four reference models, as VLM2Vec's score files give them.

Source: ``experiments/public/all_scores/<version>/<model>.json`` of TIGER-AI-Lab/VLM2Vec at commit
6e1e1d4 (2026-01-27), for the models ``VLM2Vec-V2.0-Qwen2VL-2B``, ``gme-Qwen2-VL-2B-Instruct``,
``gme-Qwen2-VL-7B-Instruct`` and ``colpali-v1.3``. Each value is the task's headline metric
(``hit@1`` for image and video, ``ndcg_linear@5`` for visual documents) as a fraction, rounded to six
decimals (the files hold full floats; their own report prints four).

Two file versions are kept, because they score different data:

* ``v2.0.1`` (2025-08): all 78 tasks; MomentSeeker is the deduplicated 1,602-query set. Its
  ``ViDoSeek-page`` / ``MMLongBench-page`` scores are for the original page sets, before the fix.
* ``v2.1-baselines-visdoc-page-fixed`` (2025-12): the page-fixed ``ViDoSeek-page`` and
  ``MMLongBench-page`` (Hub ``VLM2Vec/ViDoSeek-page-fixed`` and ``VLM2Vec/MMLongBench-page-fixed``),
  still under the ``-page`` names; only those two are copied here (its other tasks equal v2.0.1's).

Which version matches the data a task is scored on today is the registry's ``score_version``
(``pipelines.mmeb_v2``); comparing across versions compares different datasets.
"""

from __future__ import annotations

MODELS = ("VLM2Vec-V2.0", "GME-2B", "GME-7B", "ColPali")

# The file names of MODELS in the score folders, in the same order.
SCORE_FILES = ("VLM2Vec-V2.0-Qwen2VL-2B", "gme-Qwen2-VL-2B-Instruct", "gme-Qwen2-VL-7B-Instruct",
               "colpali-v1.3")

# version -> task -> headline score per model of MODELS (fractions)
HEADLINE: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "v2.0.1": {
        "ImageNet-1K": (0.808, 0.581, 0.647, 0.423),
        "N24News": (0.73, 0.503, 0.503, 0.256),
        "HatefulMemes": (0.558, 0.537, 0.539, 0.509),
        "VOC2007": (0.849, 0.758, 0.801, 0.698),
        "SUN397": (0.709, 0.67, 0.694, 0.562),
        "Place365": (0.361, 0.361, 0.391, 0.277),
        "ImageNet-A": (0.476, 0.284, 0.406, 0.152),
        "ImageNet-R": (0.893, 0.785, 0.839, 0.652),
        "ObjectNet": (0.651, 0.712, 0.69, 0.456),
        "Country211": (0.258, 0.264, 0.246, 0.06),
        "OK-VQA": (0.517, 0.301, 0.331, 0.094),
        "A-OKVQA": (0.44, 0.186, 0.208, 0.064),
        "DocVQA": (0.901, 0.3, 0.411, 0.113),
        "InfographicsVQA": (0.591, 0.118, 0.205, 0.05),
        "ChartQA": (0.481, 0.133, 0.177, 0.057),
        "Visual7W": (0.528, 0.156, 0.222, 0.061),
        "ScienceQA": (0.381, 0.271, 0.282, 0.165),
        "VizWiz": (0.433, 0.371, 0.389, 0.274),
        "GQA": (0.654, 0.753, 0.768, 0.081),
        "TextVQA": (0.716, 0.395, 0.464, 0.189),
        "VisDial": (0.827, 0.477, 0.609, 0.411),
        "CIRR": (0.573, 0.431, 0.549, 0.082),
        "VisualNews_t2i": (0.747, 0.748, 0.795, 0.505),
        "VisualNews_i2t": (0.783, 0.777, 0.836, 0.477),
        "MSCOCO_t2i": (0.759, 0.683, 0.715, 0.586),
        "MSCOCO_i2t": (0.711, 0.632, 0.574, 0.504),
        "NIGHTS": (0.684, 0.676, 0.676, 0.654),
        "WebQA": (0.906, 0.888, 0.913, 0.542),
        "FashionIQ": (0.196, 0.322, 0.376, 0.059),
        "Wiki-SS-NQ": (0.676, 0.738, 0.784, 0.805),
        "OVEN": (0.648, 0.721, 0.756, 0.501),
        "EDIS": (0.842, 0.917, 0.961, 0.652),
        "MSCOCO": (0.662, 0.284, 0.314, 0.365),
        "RefCOCO": (0.87, 0.558, 0.612, 0.65),
        "RefCOCO-Matching": (0.863, 0.737, 0.787, 0.012),
        "Visual7W-Pointing": (0.69, 0.646, 0.665, 0.563),
        "K700": (0.382, 0.349, 0.396, 0.233),
        "SmthSmthV2": (0.43, 0.301, 0.305, 0.249),
        "HMDB51": (0.402, 0.43, 0.48, 0.248),
        "UCF101": (0.6, 0.521, 0.544, 0.493),
        "Breakfast": (0.147806, 0.136259, 0.138568, 0.108545),
        "MVBench": (0.33625, 0.37575, 0.463, 0.33575),
        "Video-MME": (0.308148, 0.33963, 0.391852, 0.305926),
        "NExTQA": (0.208781, 0.393975, 0.535147, 0.351471),
        "EgoSchema": (0.35, 0.406, 0.464, 0.384),
        "ActivityNetQA": (0.53, 0.572, 0.66, 0.514),
        "DiDeMo": (0.299801, 0.215139, 0.262948, 0.2251),
        "MSR-VTT": (0.278, 0.27, 0.318, 0.177),
        "MSVD": (0.473134, 0.473134, 0.495522, 0.453731),
        "VATEX": (0.261501, 0.23046, 0.247432, 0.166816),
        "YouCook2": (0.106323, 0.078956, 0.089336, 0.051589),
        "QVHighlight": (0.496768, 0.43952, 0.593721, 0.201293),
        "Charades-STA": (0.200825, 0.143054, 0.138927, 0.290234),
        "MomentSeeker": (0.428839, 0.371411, 0.393258, 0.293383),
        "ViDoRe_arxivqa": (0.788724, 0.825337, 0.875257, 0.833346),
        "ViDoRe_docvqa": (0.370635, 0.551605, 0.565923, 0.592025),
        "ViDoRe_infovqa": (0.82707, 0.906926, 0.921736, 0.853847),
        "ViDoRe_tabfquad": (0.877664, 0.933059, 0.927076, 0.866277),
        "ViDoRe_tatdqa": (0.442904, 0.702598, 0.765758, 0.704675),
        "ViDoRe_shiftproject": (0.610415, 0.928472, 0.95641, 0.768318),
        "ViDoRe_syntheticDocQA_artificial_intelligence": (0.891209, 0.981309, 0.996309, 0.962619),
        "ViDoRe_syntheticDocQA_energy": (0.862897, 0.925616, 0.956925, 0.950178),
        "ViDoRe_syntheticDocQA_government_reports": (0.855794, 0.971546, 0.995, 0.955853),
        "ViDoRe_syntheticDocQA_healthcare_industry": (0.911328, 0.985237, 0.995, 0.970237),
        "ViDoRe_esg_reports_human_labeled_v2": (0.457944, 0.602942, 0.627639, 0.572459),
        "ViDoRe_biomedical_lectures_v2_multilingual": (0.445922, 0.539919, 0.497793, 0.562456),
        "ViDoRe_economics_reports_v2_multilingual": (0.423338, 0.508023, 0.539115, 0.501975),
        "ViDoRe_esg_reports_v2_multilingual": (0.457396, 0.5043, 0.554276, 0.555572),
        "VisRAG_ArxivQA": (0.7674, 0.819508, 0.87687, 0.809028),
        "VisRAG_ChartQA": (0.842023, 0.790877, 0.812862, 0.770378),
        "VisRAG_MP-DocVQA": (0.717984, 0.843415, 0.890795, 0.870274),
        "VisRAG_SlideVQA": (0.914444, 0.936784, 0.947242, 0.951292),
        "VisRAG_InfoVQA": (0.858768, 0.914145, 0.934891, 0.85729),
        "VisRAG_PlotQA": (0.659146, 0.641184, 0.634446, 0.601766),
        "ViDoSeek-page": (0.20885, 0.227453, 0.236384, 0.224559),
        "ViDoSeek-doc": (0.803411, 0.824913, 0.829857, 0.835319),
        "MMLongBench-page": (0.118682, 0.163229, 0.154291, 0.149271),
        "MMLongBench-doc": (0.428482, 0.519005, 0.533989, 0.52705),
    },
    "v2.1-baselines-visdoc-page-fixed": {
        "ViDoSeek-page": (0.802972, 0.79811, 0.835699, 0.792183),
        "MMLongBench-page": (0.447043, 0.513249, 0.553205, 0.531827),
    },
}
