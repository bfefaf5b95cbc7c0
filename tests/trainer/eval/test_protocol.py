"""Scoring, aggregation, dedup and encoding of trainer/eval/protocol.py."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.schema import RECORD_SCHEMA
from tests.support.encoders import BatchSensitiveEncoder, HashEncoder
from tests.support.eval_sets import build_tiny_eval, record_side, reference_scores, write_images, write_records
from tests.support.images import seeded_png
from trainer.eval import protocol as ev
from trainer.eval.cache import EmbeddingCache


# --- tests: scoring ------------------------------------------------------------------------------------
def _dyadic_table(n_items: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors with entries +-1/sqrt(dim), dim a power of 4: every dot product is exact in float32,
    so ties between distinct items are real ties."""
    return (rng.choice([-1.0, 1.0], size=(n_items, dim)) / math.sqrt(dim)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scorer_matches_reference_with_planted_ties_and_duplicates(tmp_path, seed):
    rng = np.random.default_rng(seed)
    pool = [record_side(f"item {i}") for i in range(12)]
    table = _dyadic_table(len(pool), 4, rng)  # only 16 distinct vectors in 4-D: many exact ties
    vec = {p["raw"]: table[i] for i, p in enumerate(pool)}
    rows = []
    for r in range(60):
        k = int(rng.integers(2, 9))
        cand_ids = rng.integers(0, len(pool), size=k).tolist()  # duplicates, the gold included
        if r % 4 == 0:
            cand_ids[-1] = cand_ids[0]  # planted duplicate of the gold
        rows.append((pool[int(rng.integers(0, len(pool)))], [pool[i] for i in cand_ids]))
    write_records(tmp_path, "Ties", "retrieval", "IND", rows, rows_per_part=17)
    es = ev.load_eval_set(tmp_path, "Ties")
    embeddings = np.stack([vec[it["raw"]] for it in es.items])
    got = ev.score(es, embeddings)
    ref = reference_scores(tmp_path, "Ties", lambda s: vec[s["raw"]])
    np.testing.assert_array_equal(got.ranks, ref["ranks"])
    assert got.hits_at_1 == ref["hits"]
    for m in ("precision_at_1", "hit_at_5", "mrr", "ndcg_at_5"):
        assert getattr(got, m) == pytest.approx(ref[m], abs=1e-9), m
    # ties actually happened (else the test proves nothing) and were resolved to the gold
    tie_rows = [i for i, (q, c) in enumerate(rows)
                if any(vec[x["raw"]] @ vec[q["raw"]] == vec[c[0]["raw"]] @ vec[q["raw"]] for x in c[1:])]
    assert len(tie_rows) > 10
    # scale invariance: cosine, not dot product (powers of two keep the arithmetic exact)
    scaled = embeddings * (2.0 ** rng.integers(-3, 4, size=(len(embeddings), 1))).astype(np.float32)
    np.testing.assert_array_equal(ev.gold_ranks(es, scaled), got.ranks)


def test_argmax_semantics_by_hand(tmp_path):
    a, b, c = record_side("a"), record_side("b"), record_side("c")
    rows = [(a, [a, b, c]),  # gold scores highest
            (a, [b, a, c]),  # gold is b: a (rank... ) beats it
            (a, [b, c, b]),  # tie with the duplicate of the gold -> still correct
            (a, [c, b, c])]  # the gold c ties with b; b is not the first max -> gold first -> correct
    write_records(tmp_path, "Hand", "vqa", "IND", rows)
    es = ev.load_eval_set(tmp_path, "Hand")
    vec = {"a": [1.0, 0.0], "b": [0.6, 0.8], "c": [0.6, -0.8]}
    e = np.array([vec[it["raw"]] for it in es.items], np.float32)
    res = ev.score(es, e)
    # rows 0, 2 and 3 are hits (in row 3, b and c tie at 0.6; the gold c is index 0)
    np.testing.assert_array_equal(res.ranks, [0, 1, 0, 0])
    assert res.hits_at_1 == 3 and res.precision_at_1 == 75.0
    assert res.mrr == pytest.approx(100 * (1 + 0.5 + 1 + 1) / 4)
    assert res.ndcg_at_5 == pytest.approx(100 * (3 + 1 / math.log2(3)) / 4)


def test_ranking_metrics_beyond_five():
    m = ev.ranking_metrics(np.array([0, 4, 5, 9]))
    assert m["precision_at_1"] == 25.0 and m["hit_at_5"] == 50.0
    assert m["ndcg_at_5"] == pytest.approx(100 * (1 + 1 / math.log2(6)) / 4)
    assert m["mrr"] == pytest.approx(100 * (1 + 1 / 5 + 1 / 6 + 1 / 10) / 4)


def test_normalize_rejects_bad_embeddings():
    with pytest.raises(ValueError, match="NaN"):
        ev.normalize(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="zero"):
        ev.normalize(np.array([[0.0, 0.0], [1.0, 0.0]]))


# --- tests: aggregation ---------------------------------------------------------------------------------
def _result(name, meta, dist, p):
    return ev.DatasetResult(name, meta, dist, 10, 2, 2, 20, 10, 2, 30, 12, int(p / 10), p, p, p, p)


def test_aggregation_by_hand():
    results = [
        _result("A", "classification", "IND", 80.0),
        _result("B", "classification", "OOD", 40.0),
        _result("C", "vqa", "IND", 30.0),
        _result("D", "retrieval", "IND", 60.0),
        _result("E", "retrieval", "OOD", 10.0),
        _result("F", "retrieval", "IND", 20.0),
    ]
    agg = ev.aggregate(results)
    assert agg["overall"] == pytest.approx(240 / 6)  # mean over datasets, not over meta-tasks
    assert agg["IND"] == pytest.approx((80 + 30 + 60 + 20) / 4)
    assert agg["OOD"] == pytest.approx((40 + 10) / 2)
    assert agg["meta"] == pytest.approx({"classification": 60.0, "vqa": 30.0, "retrieval": 30.0})
    assert list(agg["meta"]) == ["classification", "vqa", "retrieval"]  # no grounding: left out
    only_ind = ev.aggregate(results[:1])
    assert "OOD" not in only_ind and only_ind["IND"] == 80.0
    with pytest.raises(ValueError):
        ev.aggregate([])


# --- tests: loading and dedup ----------------------------------------------------------------------------
def test_load_dedups_queries_and_candidates(tmp_path):
    paths = build_tiny_eval(tmp_path)
    cls = ev.load_eval_set(paths["eval"], "Tiny-CLS")
    assert (cls.meta_task, cls.distribution, cls.n_queries) == ("classification", "IND", 12)
    assert cls.distinct_candidates == 4 and cls.distinct_queries == 10
    assert cls.naive_encodings == 12 * 5 and cls.dedup_encodings == 14
    vqa = ev.load_eval_set(paths["eval"], "Tiny-VQA")  # 3 parts, gold duplicated at index 3 in rows 0, 3, ...
    assert vqa.n_queries == 12 and [r.split("/")[-1] for r in vqa.row_ids] == [str(i) for i in range(12)]
    for r in range(0, 12, 3):
        c = vqa.cand_item[vqa.cand_offsets[r]:vqa.cand_offsets[r + 1]]
        assert c[3] == c[0]
    ret = ev.load_eval_set(paths["eval"], "Tiny-RET")
    assert sorted(set(ret.candidates_per_query.tolist())) == [4, 5, 6]
    # round trip: the index lists rebuild every row exactly
    table = pa.concat_tables([pq.read_table(f) for f in sorted((paths["eval"] / "Tiny-RET").glob("*.parquet"))])
    for r, row in enumerate(table.to_pylist()):
        assert ret.items[ret.query_item[r]] == row["query"]
        c = ret.cand_item[ret.cand_offsets[r]:ret.cand_offsets[r + 1]]
        assert [ret.items[i] for i in c] == [row["target"]] + row["negatives"]
    assert len(set(ret.keys)) == len(ret.keys)


def test_load_rejects_bad_records(tmp_path):
    write_records(tmp_path, "Mixed", "vqa", "IND", [(record_side("q"), [record_side("a"), record_side("b")])])
    rec = pq.read_table(tmp_path / "Mixed" / "part-00000.parquet").to_pylist()[0]
    rec2 = dict(rec, id="Mixed/test/1", meta_task="retrieval")
    pq.write_table(pa.Table.from_pylist([rec, rec2], schema=RECORD_SCHEMA), tmp_path / "Mixed" / "part-00000.parquet")
    with pytest.raises(ValueError, match="one meta_task"):
        ev.load_eval_set(tmp_path, "Mixed")
    bad_neg = dict(rec, negatives=[record_side("x"), None])
    (tmp_path / "Null").mkdir()
    pq.write_table(pa.Table.from_pylist([rec, dict(bad_neg, id="Null/test/1")], schema=RECORD_SCHEMA),
                   tmp_path / "Null" / "part-00000.parquet")
    with pytest.raises(ValueError, match="Null/test/1"):
        ev.load_eval_set(tmp_path, "Null")
    for what in ("query", "target"):  # a null side names its row (a target's index is past the queries')
        (tmp_path / f"Null{what}").mkdir()
        rows = [dict(rec, id=f"Null{what}/test/{i}") for i in range(3)]
        rows[1][what] = None
        pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), tmp_path / f"Null{what}" / "part-00000.parquet")
        with pytest.raises(ValueError, match=f"null query/target side.*Null{what}/test/1"):
            ev.load_eval_set(tmp_path, f"Null{what}")
    with pytest.raises(FileNotFoundError):
        ev.load_eval_set(tmp_path, "Absent")
    (tmp_path / "NoNegatives").mkdir()  # a part without a column names the file and the column
    part = tmp_path / "NoNegatives" / "part-00000.parquet"
    pq.write_table(pa.Table.from_pylist([rec], schema=RECORD_SCHEMA).drop_columns(["negatives"]), part)
    with pytest.raises(ValueError, match=r"NoNegatives/part-00000.parquet: missing column\(s\) \['negatives'\]"):
        ev.load_eval_set(tmp_path, "NoNegatives")


def test_plan_batches_bucket_by_modality():
    items = [record_side("t1"), record_side("", "aa"), record_side("q", "bb"), record_side("t2 longer"),
             record_side("", "cc"), record_side("x", "dd")]
    batches = ev.plan_batches(items, range(6), 2)
    assert batches == [[0, 3], [1, 4], [2, 5]]
    assert sorted(i for b in ev.plan_batches(items, range(6), 1) for i in b) == list(range(6))
    with pytest.raises(ValueError):
        ev.plan_batches(items, range(6), 0)


# --- tests: encoding with dedup and the cache ----------------------------------------------------------
def test_encode_items_dedup_and_cache(tmp_path):
    paths = build_tiny_eval(tmp_path)
    es = ev.load_eval_set(paths["eval"], "Tiny-VQA")
    loader = ev.ImageLoader(paths["images"], max_pixels=30)
    enc = HashEncoder()
    cache = EmbeddingCache(tmp_path / "cache", enc.fingerprint, {"image_max_pixels": 30})
    emb, stats = ev.encode_items(enc, es.items, es.keys, batch_size=4, load_images=loader, cache=cache,
                                 batches_per_flush=2)
    assert enc.encoded == len(es.items) == stats.encoded and stats.cache_hits == 0
    assert len(cache.parts()) >= 2  # flushed in steps
    for i, it in enumerate(es.items):
        np.testing.assert_array_equal(emb[i], enc.vector(it, loader([it["image"]["sha256"]])[it["image"]["sha256"]]
                                                          if it["image"] else None))
    # unchanged model: nothing is encoded again, identical vectors
    enc2 = HashEncoder()
    emb2, stats2 = ev.encode_items(enc2, es.items, es.keys, batch_size=4, load_images=loader,
                                   cache=EmbeddingCache(tmp_path / "cache", enc2.fingerprint, {"image_max_pixels": 30}))
    assert enc2.encoded == 0 and stats2.cache_hits == len(es.items)
    np.testing.assert_array_equal(emb, emb2)
    # a changed model misses the cache
    enc3 = HashEncoder(name="other")
    ev.encode_items(enc3, es.items, es.keys, batch_size=4, load_images=loader,
                    cache=EmbeddingCache(tmp_path / "cache", enc3.fingerprint, {"image_max_pixels": 30}))
    assert enc3.encoded == len(es.items)
    # a corrupt part is recomputed, and only its items
    part = cache.parts()[0]
    part.write_bytes(part.read_bytes()[:-5])
    enc4 = HashEncoder()
    emb4, stats4 = ev.encode_items(enc4, es.items, es.keys, batch_size=4, load_images=loader,
                                   cache=EmbeddingCache(tmp_path / "cache", enc4.fingerprint, {"image_max_pixels": 30}))
    # (the batches holding them are encoded whole, so each vector comes from its usual batch)
    assert 0 < len(es.items) - stats4.cache_hits <= enc4.encoded < len(es.items)
    np.testing.assert_array_equal(emb, emb4)


def test_vectors_do_not_depend_on_what_the_cache_held(tmp_path):
    """A real model's vector moves in its last bits with its batch's padding, enough to reorder
    near-tied candidates. However much of the dataset the cache held (an interrupted run, a run
    that stopped early), every item is encoded in the batch a cold run gives it."""
    paths = build_tiny_eval(tmp_path)
    es = ev.load_eval_set(paths["eval"], "Tiny-VQA")
    loader = ev.ImageLoader(paths["images"], max_pixels=30)
    cold, _ = ev.encode_items(BatchSensitiveEncoder(), es.items, es.keys, batch_size=3, load_images=loader)
    for kept in (1, len(es.items) // 2, len(es.items) - 1):
        cache = EmbeddingCache(tmp_path / f"cache{kept}", "batch-sensitive")
        cache.put(es.keys[:kept], cold[:kept])  # what an interrupted run had flushed
        enc = BatchSensitiveEncoder()
        warm, stats = ev.encode_items(enc, es.items, es.keys, batch_size=3, load_images=loader, cache=cache)
        np.testing.assert_array_equal(warm, cold)
        assert stats.cache_hits == kept and enc.encoded >= len(es.items) - kept


def test_image_loader_resizes_and_reports_missing(tmp_path):
    shas = write_images(tmp_path, [seeded_png(1, size=(40, 20))])
    img = ev.ImageLoader(tmp_path, max_pixels=200)(shas)[shas[0]]
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= 200 and img.size == (20, 10)
    assert ev.ImageLoader(tmp_path)(shas)[shas[0]].size == (40, 20)
    with pytest.raises(KeyError):
        ev.ImageLoader(tmp_path)(["0" * 64])


def test_encoder_output_is_checked(tmp_path):
    items = [record_side("a"), record_side("b")]

    class Broken(HashEncoder):
        def encode(self, sides, images, batch_size=8):
            return np.zeros((len(sides) + 1, 4), np.float32)

    with pytest.raises(ValueError, match="shape"):
        ev.encode_items(Broken(), items, ["ka", "kb"], batch_size=2, load_images=None)


def test_an_item_the_backbone_refuses_is_named_in_the_error(tmp_path):
    """Qwen2-VL's processor refuses an aspect ratio over 200: evaluation names the dataset and the item
    instead of the processor's bare ValueError."""
    from trainer.backbone.families import build_tiny, save_backbone
    from trainer.embed import EmbeddingModel

    save_backbone(build_tiny("qwen2_vl"), tmp_path / "base")
    model = EmbeddingModel.load(tmp_path / "base")
    items = [record_side("a cat", "a" * 64), record_side("a dog", "b" * 64)]
    images = {"a" * 64: Image.new("RGB", (56, 56)), "b" * 64: Image.new("RGB", (300 * 28, 28))}
    with pytest.raises(ValueError, match=r"Syn-X: cannot encode .*item 1: .*a dog.*8400x28.*aspect ratio"):
        ev.encode_items(model, items, ["k0", "k1"], batch_size=2, desc="Syn-X",
                        load_images=lambda shas: {s: images[s] for s in shas})
