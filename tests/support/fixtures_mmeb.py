"""Real-format MMEB fixtures: rows quoted verbatim from MMEB-train / MMEB-eval, written in the Hub layout.

    write_raw(root)  ->  root/MMEB-train/<Subset>/original-00000-of-00001.parquet
                         root/MMEB-train/images_zip/<Subset>.zip   (members <Subset>/Train/...: the
                                                                    zips unpack into images/)
                         root/MMEB-eval/<Dataset>/test-00000-of-00001.parquet
                         root/MMEB-eval/images.zip                  (members <Dataset>/...)
                         root/manifest.json

Images are tiny distinct JPEGs generated per path (`tests.support.images.jpeg_for`; override any
member with `members=`). Also builders for bad zips. Reusable by any test that needs real-format raw
data.
"""

from __future__ import annotations

import json
import stat
import struct
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support.images import jpeg_for

# ---------------------------------------------------------------------------------------------
# rows, verbatim from MMEB-train's rows and MMEB-eval's rows (file names there are "…",
# so eval image names below are made up in the documented "<Dataset>/..." form)

VISDIAL_QRY = ("Represent the given dialogue about an image, which is used for image retrieval: "
               "Q:is this a child or adult\nA:adult\nQ:male or female\nA:male\n … "
               "Q:what color is the dog\nA:tan\n\n")
WEBQA_QRY = ("<|image_1|>\nFind a Wikipedia image that answers this question: Does a Minnetonka "
             "Rhododendron flower have petals in a cup shape?\n")
WEBQA_TGT = ("<|image_1|>\nRepresent the given Wikipedia image with related text information: "
             "2020-05-08 15 17 05 Minnetonka Rhododendron flower along Tranquility Court in the Franklin "
             "Farm section of Oak Hill, Fairfax County, Virginia …\n")


def train_row(qry, qry_image_path="", pos_text="", pos_image_path="", neg_text="", neg_image_path=""):
    return dict(qry=qry, qry_image_path=qry_image_path, pos_text=pos_text,
                pos_image_path=pos_image_path, neg_text=neg_text, neg_image_path=neg_image_path)


def eval_row(qry_text, qry_img_path, tgt_text, tgt_img_path):
    return dict(qry_text=qry_text, qry_img_path=qry_img_path, tgt_text=list(tgt_text),
                tgt_img_path=list(tgt_img_path))


TRAIN_ROWS: dict[str, list[dict]] = {
    "ImageNet_1K": [train_row(
        "<|image_1|>\nRepresent the given image for classification\n",
        "images/ImageNet_1K/Train/image_0.jpg",
        "plane, carpenter's plane, woodworking plane")],
    "N24News": [train_row(
        "<|image_1|>\nRepresent the given news image with the following caption for domain "
        "classification: Danai Gurira and André Holland in a theater at New York University, where "
        "they met in the Tisch Graduate Acting Program.\n",
        "images/N24News/Train/N24News_image_0.jpg", "Theater", "", "Global Business", "")],
    "OK-VQA": [train_row(
        "<|image_1|>\nRepresent the given image with the following question: What is the hairstyle of "
        "the blond called?\n",
        "images/OK-VQA/Train/OK-VQA_image_0.jpg", "pony tail", "", "husky", "")],
    "VisDial": [train_row(
        VISDIAL_QRY, "", "<|image_1|>\nRepresent the given image\n",
        "images/VisDial/Train/VisDial_image_0.jpg", "", "images/VisDial/Train/VisDial_image_61616.jpg")],
    "MSCOCO": [train_row(
        "<|image_1|>\nSelect the portion of the image that isolates the object labeled as \"hot dog\"\n",
        "images/MSCOCO/Train/000000558840.jpg",
        "<|image_1|>\nRepresent the given cropped image of the object",
        "images/MSCOCO/Train/558840_object_hot dog.jpg")],
    # WebQA train: the stray image token of a text-only query
    "WebQA": [train_row(WEBQA_QRY, "", WEBQA_TGT, "images/WebQA/Train/WebQA_image_0.jpg")],
}

COUNTRY211_LABELS = ["Fiji", "Liechtenstein", "Solomon Islands", "Sint Maarten", "Colombia"]
EVAL_ROWS: dict[str, list[dict]] = {
    "Country211": [eval_row(
        "<|image_1|>\nIdentify the country depicted in the image\n", "Country211/fiji_0.jpg",
        COUNTRY211_LABELS, [""] * len(COUNTRY211_LABELS))],
    "OK-VQA": [eval_row(
        "<|image_1|>\nRepresent the given image with the following question: What sport can you use "
        "this for?\n", "OK-VQA/val2014_0.jpg", ["race", "tennis", "surfing"], ["", "", ""])],
    "MSCOCO_t2i": [eval_row(
        "Find me an everyday image that matches the given caption: A man with a red helmet on a small "
        "moped on a dirt road.\n", "",
        ["<|image_1|>\nRepresent the given image.\n"] * 3,
        ["MSCOCO_t2i/gold_0.jpg", "MSCOCO_t2i/other_1.jpg", "MSCOCO_t2i/other_2.jpg"])],
    "WebQA": [eval_row(
        WEBQA_QRY, "", [WEBQA_TGT, "<|image_1|>\nRepresent the given Wikipedia image with related "
                                   "text information: A red tulip in a garden.\n"],
        ["WebQA/gold_0.jpg", "WebQA/other_1.jpg"])],
    "RefCOCO-Matching": [eval_row(
        "<|image_1|>\nSelect the portion of the image that follows the language expressions: \"bowl "
        "behind the others can only see part\"\n", "RefCOCO-Matching/query_0.jpg",
        ["<|image_1|>\nSelect the portion of the image that follows the language expressions: \"Dish "
         "in top right corner\"\n",
         "<|image_1|>\nSelect the portion of the image that follows the language expressions: \"left "
         "cup\"\n"],
        ["RefCOCO-Matching/crop_0.jpg", "RefCOCO-Matching/crop_1.jpg"])],
}


# ---------------------------------------------------------------------------------------------
# zips


def write_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 10, 9, 0, 0, 0))
            info.compress_type = compression
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return path


def add_symlink(path: Path, name: str, target: str) -> None:
    with zipfile.ZipFile(path, "a") as zf:
        info = zipfile.ZipInfo(name, date_time=(2024, 10, 9, 0, 0, 0))
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, target)


def corrupt_member_crc(path: Path, name: str) -> None:
    """Flip a byte inside a STORED member's data so its CRC no longer matches."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        assert info.compress_type == zipfile.ZIP_STORED
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes + name + extra; data follows
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    data_at = info.header_offset + 30 + name_len + extra_len
    raw[data_at + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------------------------
# the raw layout

TRAIN_SCHEMA = pa.schema([(c, pa.string()) for c in
                          ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text",
                           "neg_image_path")])
EVAL_SCHEMA = pa.schema([("qry_text", pa.string()), ("qry_img_path", pa.string()),
                         ("tgt_text", pa.list_(pa.string())), ("tgt_img_path", pa.list_(pa.string()))])


def referenced_paths(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for k, v in r.items():
            if k.endswith("_path"):
                out.extend(p for p in (v if isinstance(v, list) else [v]) if p)
    return out


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_raw(root: Path, train_rows: dict[str, list[dict]] | None = None,
              eval_rows: dict[str, list[dict]] | None = None, train_split: str = "original",
              members: dict[str, bytes] | None = None, omit: set[str] = frozenset(),
              manifest: dict | None = None, train_zip_prefix: str = "") -> Path:
    """Write a raw MMEB tree. Every referenced image path gets a tiny JPEG unless `members` gives its
    bytes or `omit` leaves it out of the zip; extra `members` names are added too (both keyed by row
    path). A train row path images/<Subset>/Train/<file> is stored in its zip as
    `train_zip_prefix` + <Subset>/Train/<file> (MMEB-train's zips unpack into images/)."""
    root = Path(root)
    train_rows = TRAIN_ROWS if train_rows is None else train_rows
    eval_rows = EVAL_ROWS if eval_rows is None else eval_rows
    members = dict(members or {})
    zips: dict[Path, dict[str, bytes]] = {}
    for subset, rows in train_rows.items():
        write_parquet(root / "MMEB-train" / subset / f"{train_split}-00000-of-00001.parquet", rows,
                      TRAIN_SCHEMA)
        zips.setdefault(root / "MMEB-train" / "images_zip" / f"{subset}.zip", {})
        for p in referenced_paths(rows):
            sub = p.split("/")[1] if p.startswith("images/") else subset
            zips.setdefault(root / "MMEB-train" / "images_zip" / f"{sub}.zip", {})[p] = None
    for dataset, rows in eval_rows.items():
        write_parquet(root / "MMEB-eval" / dataset / "test-00000-of-00001.parquet", rows, EVAL_SCHEMA)
        for p in referenced_paths(rows):
            zips.setdefault(root / "MMEB-eval" / "images.zip", {})[p] = None
    for name in members:
        if name.startswith("images/"):
            zips.setdefault(root / "MMEB-train" / "images_zip" / f"{name.split('/')[1]}.zip", {})[name] = None
        else:
            zips.setdefault(root / "MMEB-eval" / "images.zip", {})[name] = None
    for zpath, names in zips.items():
        content = {n: members.get(n, jpeg_for(n)) for n in sorted(names) if n not in omit}
        if zpath.parent.name == "images_zip":
            content = {(train_zip_prefix + n[len("images/"):] if n.startswith("images/") else n): data
                       for n, data in content.items()}
        write_zip(zpath, content)
    m = manifest if manifest is not None else {"train_split": train_split, "source": "fixture"}
    (root / "manifest.json").write_text(json.dumps(m, indent=2), encoding="utf-8")
    return root
