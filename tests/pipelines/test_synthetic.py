"""Tests of the synthetic miniature MMEB generator (the package pipelines/sources/synthetic/)."""

from __future__ import annotations

import collections
import hashlib
import io
import re
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipelines import mmeb
from pipelines.prompts import split_side
from pipelines.schema import EVAL_COLUMNS, IMAGE_TOKEN, TRAIN_COLUMNS
from pipelines.sources import synthetic as syn
from pipelines.sources.synthetic import datasets, instructions, scenes, zips

SMALL = dict(seed=3, train_rows=24, eval_rows=20, eval_candidates=8, image_size=64)
TRAIN_SPLITS = ("original", "diverse_instruction")
COLOUR_SHAPE = re.compile(rf"\b({'|'.join(scenes.COLOURS)}) ({'|'.join(scenes.SHAPES)})\b")


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("syn")
    summary = syn.generate(root, **SMALL)
    return root, summary


def _train(root: Path, name: str, split: str = "original") -> pa.Table:
    return pq.read_table(root / "MMEB-train" / name / f"{split}-00000-of-00001.parquet")


def _eval(root: Path, name: str) -> pa.Table:
    return pq.read_table(root / "MMEB-eval" / name / "test-00000-of-00001.parquet")


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _nearest_colour(pixel, bg) -> str:
    """Name of the palette colour nearest to pixel, or 'bg' when the background is nearer."""
    options = dict(scenes.COLOURS, bg=bg)
    return min(options, key=lambda n: sum((a - b) ** 2 for a, b in zip(pixel, options[n])))


# --- layout and formats -----------------------------------------------------------------------------
def test_layout_is_exactly_the_hub_layout(out):
    root, _ = out
    expected = {"MMEB-train/README.md", "MMEB-eval/README.md", "MMEB-eval/images.zip"}
    for name in mmeb.SYNTHETIC_TRAIN:
        expected |= {f"MMEB-train/{name}/{s}-00000-of-00001.parquet" for s in TRAIN_SPLITS}
        expected.add(f"MMEB-train/images_zip/{name}.zip")
    for name in mmeb.SYNTHETIC_EVAL:
        expected.add(f"MMEB-eval/{name}/test-00000-of-00001.parquet")
    assert set(_files(root)) == expected


def test_columns_and_types_match_the_hub(out):
    root, _ = out
    for name in mmeb.SYNTHETIC_TRAIN:
        for split in TRAIN_SPLITS:
            t = _train(root, name, split)
            assert t.column_names == list(TRAIN_COLUMNS)
            assert all(f.type == pa.string() for f in t.schema)
            assert t.num_rows == SMALL["train_rows"]
            assert all(v is not None for col in t.columns for v in col.to_pylist())
    for name in mmeb.SYNTHETIC_EVAL:
        t = _eval(root, name)
        assert t.column_names == list(EVAL_COLUMNS)
        assert t.schema.field("qry_text").type == pa.string()
        assert t.schema.field("qry_img_path").type == pa.string()
        for col in ("tgt_text", "tgt_img_path"):
            assert pa.types.is_list(t.schema.field(col).type)
            assert t.schema.field(col).type.value_type == pa.string()
        assert t.num_rows == SMALL["eval_rows"]


def test_dataset_cards_declare_configs_and_splits(out):
    root, _ = out
    for repo, names, splits in (
        ("MMEB-train", mmeb.SYNTHETIC_TRAIN, TRAIN_SPLITS),
        ("MMEB-eval", mmeb.SYNTHETIC_EVAL, ("test",)),
    ):
        text = (root / repo / "README.md").read_text(encoding="utf-8")
        assert text.startswith("---\n")
        header = yaml.safe_load(text.split("---\n")[1])
        assert sorted(c["config_name"] for c in header["configs"]) == sorted(names)
        for cfg in header["configs"]:
            assert [d["split"] for d in cfg["data_files"]] == list(splits)
            for d in cfg["data_files"]:
                assert len(list((root / repo).glob(d["path"]))) == 1, d["path"]
        for info in header["dataset_info"]:
            assert {s["name"] for s in info["splits"]} == set(splits)


def test_datasets_library_loads_the_generated_repos(out, tmp_path):
    datasets = pytest.importorskip("datasets")
    root, _ = out
    ds = datasets.load_dataset(
        str(root / "MMEB-train"), "Syn-Grounding", split="diverse_instruction", cache_dir=str(tmp_path)
    )
    assert ds.num_rows == SMALL["train_rows"] and ds.column_names == list(TRAIN_COLUMNS)
    ds = datasets.load_dataset(str(root / "MMEB-eval"), "Syn-WebQA", split="test", cache_dir=str(tmp_path))
    assert ds.features["tgt_text"].feature.dtype == "string"
    assert ds[0]["tgt_text"][0].startswith(IMAGE_TOKEN + "\n")


# --- strings and conventions ----------------------------------------------------------------------
def test_image_token_iff_image_except_webqa(out):
    root, _ = out
    for name in mmeb.SYNTHETIC_TRAIN:
        for split in TRAIN_SPLITS:
            for row in _train(root, name, split).to_pylist():
                has_img = row["qry_image_path"] != ""
                if name == "Syn-WebQA":  # the stray token of a text-only query
                    assert IMAGE_TOKEN in row["qry"] and not has_img
                else:
                    assert (IMAGE_TOKEN in row["qry"]) == has_img, row
                assert (IMAGE_TOKEN in row["pos_text"]) == (row["pos_image_path"] != ""), row
                assert IMAGE_TOKEN not in row["neg_text"]
                if split == "original" and IMAGE_TOKEN in row["qry"]:
                    assert row["qry"].startswith(IMAGE_TOKEN + "\n")
    for name in mmeb.SYNTHETIC_EVAL:
        for row in _eval(root, name).to_pylist():
            if name == "Syn-WebQA":
                assert row["qry_text"].startswith(IMAGE_TOKEN + "\n") and row["qry_img_path"] == ""
            else:
                assert (IMAGE_TOKEN in row["qry_text"]) == (row["qry_img_path"] != "")
            for text, path in zip(row["tgt_text"], row["tgt_img_path"]):
                assert (IMAGE_TOKEN in text) == (path != "")


def test_verbatim_mmeb_strings(out):
    root, _ = out
    first = {n: _train(root, n).to_pylist()[0] for n in mmeb.SYNTHETIC_TRAIN}
    assert first["Syn-ShapeCLS"]["qry"] == "<|image_1|>\nRepresent the given image for classification\n"
    assert first["Syn-ShapeCLS"]["qry_image_path"] == "images/Syn-ShapeCLS/Train/image_0.jpg"
    assert first["Syn-Caption_t2i"]["pos_text"] == "<|image_1|>\nRepresent the given image.\n"
    assert first["Syn-Dialog_t2i"]["pos_text"] == "<|image_1|>\nRepresent the given image\n"
    assert first["Syn-Grounding"]["pos_text"] == "<|image_1|>\nRepresent the given cropped image of the object"
    assert re.fullmatch(
        r'<\|image_1\|>\nSelect the portion of the image that isolates the object labeled as "[a-z]+ [a-z]+"\n',
        first["Syn-Grounding"]["qry"],
    )
    assert first["Syn-WebQA"]["pos_text"].startswith(
        "<|image_1|>\nRepresent the given Wikipedia image with related text information: "
    ) and first["Syn-WebQA"]["pos_text"].endswith("\n")
    for row in _train(root, "Syn-Dialog_t2i").to_pylist():  # VisDial: Q:/A: turns, then "\n\n"
        body = row["qry"].removeprefix(instructions.DIALOG_INST)
        assert re.fullmatch(r"(Q:[^\n]+\nA:[^\n]+\n)+\n", body), body
        assert row["neg_image_path"].startswith("images/Syn-Dialog_t2i/Train/") and row["neg_text"] == ""
    for name in ("Syn-NewsCLS", "Syn-ShapeVQA"):  # hard-negative labels / answers, never the gold
        rows = _train(root, name).to_pylist()
        assert all(r["neg_text"] and r["neg_text"] != r["pos_text"] and not r["neg_image_path"] for r in rows)
    ev = {n: _eval(root, n).to_pylist()[0] for n in mmeb.SYNTHETIC_EVAL}
    assert ev["Syn-Grounding"]["qry_text"].startswith(
        '<|image_1|>\nCrop the image to to isolate the object labeled as "'
    )
    assert ev["Syn-RefGrounding"]["qry_text"].startswith(
        '<|image_1|>\nSelect the portion of the image that follows the language expressions. "the object '
    )
    assert ev["Syn-NIGHTS"]["qry_text"] == (
        "<|image_1|>\nFind a day-to-day image that looks similar to the provided image.\n"
    )


def test_diverse_instruction_changes_only_the_query_instruction(out):
    root, _ = out
    for name in mmeb.SYNTHETIC_TRAIN:
        orig, div = _train(root, name, "original"), _train(root, name, "diverse_instruction")
        for col in TRAIN_COLUMNS[1:]:
            assert orig.column(col).equals(div.column(col)), (name, col)
        phrasings = instructions.DIVERSE_PHRASINGS[name]
        changed = 0
        for q, d in zip(orig.column("qry").to_pylist(), div.column("qry").to_pylist()):
            changed += q != d
            if name in instructions.INSTRUCTION_ONLY:
                assert d in phrasings
            else:  # same content after the instruction, which is one of the 10 phrasings
                content = q[len(phrasings[0]) :]
                assert any(d == p + content for p in phrasings), (q, d)
                # ... and normalize recovers the same query text from either split
                assert split_side(d, "query").text == split_side(q, "query").text != "", (q, d)
        assert changed > SMALL["train_rows"] // 2, name


def test_grounding_crop_file_names_have_spaces_and_show_the_label(out):
    root, _ = out
    with zipfile.ZipFile(root / "MMEB-train" / "images_zip" / "Syn-Grounding.zip") as zf:
        members = set(zf.namelist())
        for row in _train(root, "Syn-Grounding").to_pylist():
            label = re.search(r'"(.+)"', row["qry"]).group(1)
            path = row["pos_image_path"]
            assert re.fullmatch(rf"images/Syn-Grounding/Train/\d{{6}}_object_{label}\.jpg", path), path
            assert " " in path and path.removeprefix("images/") in members  # zips unpack into images/
            crop = _decode(zf.read(path.removeprefix("images/"))).convert("RGB")
            scene = _decode(zf.read(row["qry_image_path"].removeprefix("images/"))).convert("RGB")
            assert crop.width < scene.width and crop.height < scene.height
            centre = crop.getpixel((crop.width // 2, crop.height // 2))
            assert _nearest_colour(centre, scene.getpixel((0, 0))) == label.split()[0], (path, centre)


# --- images ---------------------------------------------------------------------------------------
def test_every_referenced_image_is_in_the_right_zip_and_none_is_orphaned(out):
    root, summary = out
    total = 0
    for name in mmeb.SYNTHETIC_TRAIN:
        with zipfile.ZipFile(root / "MMEB-train" / "images_zip" / f"{name}.zip") as zf:
            files = {n for n in zf.namelist() if not n.endswith("/")}
        refs = set()
        for split in TRAIN_SPLITS:
            t = _train(root, name, split)
            for col in ("qry_image_path", "pos_image_path", "neg_image_path"):
                refs |= {p for p in t.column(col).to_pylist() if p}
        assert all(p.startswith(f"images/{name}/Train/") for p in refs)
        assert {p.removeprefix("images/") for p in refs} == files, name  # the zips unpack into images/
        total += len(files)
    assert total == summary["images"]["train"]
    with zipfile.ZipFile(root / "MMEB-eval" / "images.zip") as zf:
        files = {n for n in zf.namelist() if not n.endswith("/")}
    refs = set()
    for name in mmeb.SYNTHETIC_EVAL:
        t = _eval(root, name)
        paths = [p for p in t.column("qry_img_path").to_pylist() if p]
        paths += [p for lst in t.column("tgt_img_path").to_pylist() for p in lst if p]
        assert all(p.startswith(f"{name}/") for p in paths)
        refs |= set(paths)
    assert refs == files and len(files) == summary["images"]["eval"]


def test_images_decode_in_the_expected_formats_and_modes(out):
    root, summary = out
    formats, modes = collections.Counter(), collections.Counter()
    zips = [root / "MMEB-eval" / "images.zip"] + sorted((root / "MMEB-train" / "images_zip").glob("*.zip"))
    for path in zips:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                img = _decode(zf.read(info))
                ext = {"JPEG": ".jpg", "PNG": ".png"}[img.format]
                assert info.filename.endswith(ext)
                formats[img.format] += 1
                modes[img.mode] += 1
                if "_object_" not in info.filename:  # scenes are full size, crops smaller
                    assert img.size == (SMALL["image_size"],) * 2
    assert formats["JPEG"] > formats["PNG"] > 0
    assert modes["RGBA"] > 0 and modes["P"] > 0
    assert dict(modes) == summary["image_modes"]


def test_caption_objects_are_drawn_where_and_in_the_colour_the_caption_says(out):
    root, _ = out
    phrase = re.compile(
        rf"(small|large) ({'|'.join(scenes.COLOURS)}) ({'|'.join(scenes.SHAPES)}) (?:at the|in the) (\w+)"
    )
    k = SMALL["image_size"] / 64
    with zipfile.ZipFile(root / "MMEB-train" / "images_zip" / "Syn-Caption_i2t.zip") as zf:
        for row in _train(root, "Syn-Caption_i2t").to_pylist():
            img = _decode(zf.read(row["qry_image_path"].removeprefix("images/"))).convert("RGB")
            bg = img.getpixel((0, 0))
            objects = phrase.findall(row["pos_text"])
            assert 1 <= len(objects) <= 3
            for size, colour, shape, pos in objects:
                fx, fy = scenes.POSITIONS[pos]
                cx, cy = fx * img.width, fy * img.height
                window = collections.Counter(
                    _nearest_colour(img.getpixel((x, y)), bg)
                    for x in range(int(cx - 4 * k), int(cx + 4 * k) + 1)
                    for y in range(int(cy - 4 * k), int(cy + 4 * k) + 1)
                )
                window.pop("bg", None)
                assert window and window.most_common(1)[0][0] == colour, (row["pos_text"], pos, window)


def test_classification_images_show_the_gold_label_colour(out):
    root, _ = out
    with zipfile.ZipFile(root / "MMEB-eval" / "images.zip") as zf:
        for name in ("Syn-ShapeCLS", "Syn-ShapeCLS-Unseen"):
            for row in _eval(root, name).to_pylist():
                img = _decode(zf.read(row["qry_img_path"])).convert("RGB")
                bg = img.getpixel((0, 0))
                grid = [(x, y) for x in range(0, img.width, 2) for y in range(0, img.height, 2)]
                counts = collections.Counter(_nearest_colour(img.getpixel(xy), bg) for xy in grid)
                counts.pop("bg")
                assert counts.most_common(1)[0][0] == row["tgt_text"][0].split()[0]


def test_eval_images_are_fresh_renderings(out):
    root, _ = out

    def digests(path: Path) -> set[str]:
        with zipfile.ZipFile(path) as zf:
            return {hashlib.sha256(zf.read(i)).hexdigest() for i in zf.infolist() if not i.is_dir()}

    train = set().union(*(digests(p) for p in (root / "MMEB-train" / "images_zip").glob("*.zip")))
    assert not train & digests(root / "MMEB-eval" / "images.zip")


# --- candidates -------------------------------------------------------------------------------------
def test_eval_lists_have_exactly_eval_candidates_also_below_the_hard_candidates(tmp_path):
    """Grounding rows bring several same-scene hard candidates; with fewer candidates asked for
    than that, the list is still exactly eval_candidates long."""
    syn.generate(tmp_path, seed=3, train_rows=3, eval_rows=5, eval_candidates=2, image_size=32)
    for name in mmeb.SYNTHETIC_EVAL:
        if mmeb.SYNTHETIC[name].meta_task != "classification":  # those carry the whole label set
            assert {len(r["tgt_text"]) for r in _eval(tmp_path, name).to_pylist()} == {2}, name



def test_eval_candidate_lists(out):
    root, _ = out
    k = SMALL["eval_candidates"]
    for name in mmeb.SYNTHETIC_EVAL:
        rows = _eval(root, name).to_pylist()
        info = mmeb.SYNTHETIC[name]
        for row in rows:
            assert len(row["tgt_text"]) == len(row["tgt_img_path"])
        if info.meta_task == "classification":  # the whole label set, gold first, same set per row
            label_sets = {frozenset(r["tgt_text"]) for r in rows}
            assert len(label_sets) == 1
            assert all(len(r["tgt_text"]) == len(set(r["tgt_text"])) for r in rows)
            canonical = datasets.BUILDERS[name].labels  # the rest comes in a per-row shuffled order
            in_order = sum(r["tgt_text"][1:] == [c for c in canonical if c != r["tgt_text"][0]] for r in rows)
            assert in_order < len(rows) // 4
            assert len({tuple(r["tgt_text"][1:]) for r in rows}) > len(rows) // 2
            continue
        golds = [(r["tgt_text"][0], r["tgt_img_path"][0]) for r in rows]
        for i, row in enumerate(rows):
            cands = list(zip(row["tgt_text"], row["tgt_img_path"]))
            assert len(cands) == k and len(set(cands)) == k
            if info.target == "T":
                assert len(set(row["tgt_text"])) == k  # text candidates differ in text
            others = set(golds[:i] + golds[i + 1 :])
            extra = [c for c in cands[1:] if c not in others]
            if name == "Syn-RefGrounding":  # other objects of the same scene, then other rows' golds
                assert 1 <= len(extra) <= 2
                stem = row["qry_img_path"].removesuffix(".jpg")
                assert all(p.startswith(stem + "_object_") for _, p in extra)
            elif info.target != "T":
                assert not extra, (name, extra)
        if info.target != "T":
            assert len({g[1] for g in golds}) == len(rows)  # each row has its own gold image


def test_classification_label_sets(out):
    root, _ = out
    names = ("Syn-ShapeCLS", "Syn-ShapeCLS-Unseen", "Syn-NewsCLS")
    first = {n: _eval(root, n).to_pylist()[0]["tgt_text"] for n in names}
    assert set(first["Syn-ShapeCLS"]) == {f"{c} {s}" for c, s in scenes.SEEN}
    assert set(first["Syn-ShapeCLS-Unseen"]) == {f"{c} {s}" for c, s in scenes.HELD_OUT}
    assert len(first["Syn-NewsCLS"]) == 16
    assert 10 <= len(scenes.SEEN) and len(scenes.HELD_OUT) >= 10


# --- OOD ---------------------------------------------------------------------------------------------
def test_held_out_combinations_never_appear_in_train_texts(out):
    root, _ = out
    held = {f"{c} {s}" for c, s in scenes.HELD_OUT}
    dialog_turn = re.compile(r"Q:is there a (\w+)\nA:yes\nQ:what color is it\nA:(\w+)\n")
    for name in mmeb.SYNTHETIC_TRAIN:
        for split in TRAIN_SPLITS:
            for row in _train(root, name, split).to_pylist():
                text = " ".join(row[c] for c in TRAIN_COLUMNS)
                found = {" ".join(m) for m in COLOUR_SHAPE.findall(text)}
                found |= {f"{c} {s}" for s, c in dialog_turn.findall(text)}
                assert not found & held, (name, row)
    labels = set(_train(root, "Syn-ShapeCLS").column("pos_text").to_pylist())
    assert labels and not labels & held


def test_held_out_combinations_never_drawn_in_train_images(tmp_path, monkeypatch):
    drawn = []
    real_render = datasets.render  # the builders draw every image through this name

    def recording_render(scene, size):
        drawn.extend((o.colour, o.shape) for o in scene.objects)
        return real_render(scene, size)

    monkeypatch.setattr(datasets, "render", recording_render)
    syn.generate(tmp_path / "a", **dict(SMALL, train_rows=60), eval_subsets=[])
    assert len(drawn) > 500 and not set(drawn) & scenes.HELD_OUT
    assert len(set(drawn)) == len(scenes.SEEN)  # every seen combination is drawn
    drawn.clear()
    syn.generate(tmp_path / "b", **SMALL, train_subsets=[], eval_subsets=["Syn-ShapeCLS-Unseen"])
    assert drawn and set(drawn) <= scenes.HELD_OUT


def test_new_instruction_is_never_used_in_train(out):
    root, _ = out
    train_queries = [
        q.replace(IMAGE_TOKEN, "")
        for name in mmeb.SYNTHETIC_TRAIN
        for split in TRAIN_SPLITS
        for q in _train(root, name, split).column("qry").to_pylist()
    ]
    for row in _eval(root, "Syn-ShapeVQA-NewInst").to_pylist():
        question = re.search(r"(What|Where|How)[^\n]*\?\n$", row["qry_text"]).group(0)
        instruction = row["qry_text"].removeprefix(IMAGE_TOKEN + "\n").removesuffix(question)
        assert instruction and all(instruction not in q for q in train_queries)
        phrasings = instructions.DIVERSE_PHRASINGS["Syn-ShapeVQA"]
        assert not any(instruction.strip() in p.replace(IMAGE_TOKEN, "") for p in phrasings)


# --- determinism and arguments ----------------------------------------------------------------------
def test_byte_deterministic_and_seed_dependent(out, tmp_path):
    root, _ = out
    again = syn.generate(tmp_path / "again", **SMALL)
    first, second = _files(root), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [n for n in first if first[n] != second[n]] == []
    syn.generate(tmp_path / "other", **dict(SMALL, seed=SMALL["seed"] + 1))
    other = _files(tmp_path / "other")
    assert all(other[n] != first[n] for n in first if n.endswith((".parquet", ".zip")))
    assert again["images"]


def test_zip_entries_sorted_with_fixed_dates(out):
    root, _ = out
    for path in [root / "MMEB-eval" / "images.zip", *(root / "MMEB-train" / "images_zip").glob("*.zip")]:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.date_time for i in infos} == {zips.ZIP_DATE}
        assert all(not i.filename.startswith("/") and ".." not in i.filename for i in infos)


def test_a_dataset_does_not_depend_on_the_other_selected_subsets(out, tmp_path):
    root, _ = out
    syn.generate(tmp_path, **SMALL, train_subsets=["Syn-CIRR"], eval_subsets=["Syn-NIGHTS"])
    part, full = _files(tmp_path), _files(root)
    for name in (
        "MMEB-train/Syn-CIRR/original-00000-of-00001.parquet",
        "MMEB-train/Syn-CIRR/diverse_instruction-00000-of-00001.parquet",
        "MMEB-train/images_zip/Syn-CIRR.zip",
        "MMEB-eval/Syn-NIGHTS/test-00000-of-00001.parquet",
    ):
        assert part[name] == full[name], name
    assert "MMEB-train/Syn-ShapeCLS/original-00000-of-00001.parquet" not in part


def test_bad_arguments_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown subsets"):
        syn.generate(tmp_path / "x", train_subsets=["ImageNet_1K"])
    with pytest.raises(ValueError, match="too small"):
        syn.generate(tmp_path / "y", train_rows=2, eval_rows=4, eval_candidates=8, train_subsets=[],
                     eval_subsets=["Syn-Caption_t2i"])
    foreign = tmp_path / "real" / "MMEB-train"
    foreign.mkdir(parents=True)
    (foreign / "README.md").write_text("---\npretty_name: MMEB-train\n---\n")
    with pytest.raises(FileExistsError):
        syn.generate(tmp_path / "real", train_rows=4, eval_rows=4, eval_candidates=2)
    assert (foreign / "README.md").exists()
    # our own earlier output is replaced, leaving no stale files behind
    syn.generate(tmp_path / "own", train_rows=4, eval_rows=4, eval_candidates=2)
    syn.generate(tmp_path / "own", train_rows=4, eval_rows=4, eval_candidates=2, train_subsets=["Syn-CIRR"])
    left = sorted(p.name for p in (tmp_path / "own" / "MMEB-train").iterdir())
    assert left == ["README.md", "Syn-CIRR", "images_zip"]
