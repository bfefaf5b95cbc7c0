"""Mined batches: clusters of the kNN graph, batches drawn from them, records read by id."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tests.support.shards import write_test_shards
from trainer.train import clusters as C
from trainer.train import stream as D


def cliques(*groups: list[str]) -> dict[str, list[str]]:
    """Each record ranks every other record of its group (a kNN graph of disjoint cliques)."""
    return {r: [o for o in g if o != r] for g in groups for r in g}


A, B = [f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]
LONERS = ["x", "y"]  # no neighbours


def test_clusters_are_the_graphs_groups_and_loners_fall_back():
    ids = A + B + LONERS
    found = C.build_clusters(ids, cliques(A, B), {i: i for i in ids}, size=4, seed=0)
    assert sorted(map(sorted, found.clusters)) == [sorted(A), sorted(B)]
    assert sorted(found.fallback) == LONERS
    assert found.counts == {"records": 10, "no_neighbours": 2, "attached": 0, "leftover": 0, "clusters": 2,
                            "clustered": 8, "fallback": 2}


def test_clusters_follow_edges_either_way_and_stop_at_the_size():
    # a chain a0 -> a1 -> ... -> a7: only the records that rank each other or are ranked are joined
    chain = [f"a{i}" for i in range(8)]
    graph = {chain[i]: [chain[i + 1]] for i in range(7)}
    found = C.build_clusters(chain, graph, {i: i for i in chain}, size=3, seed=1)
    for members in found.clusters:
        assert len(members) <= 2 * 3
        positions = sorted(chain.index(m) for m in members)
        assert positions == list(range(positions[0], positions[0] + len(positions)))  # contiguous on the chain
    assert sorted(sum(found.clusters, []) + found.fallback) == chain


def test_records_with_the_same_target_never_share_a_cluster():
    ids = A + B
    targets = {i: ("same" if i in ("a0", "a1") else i) for i in ids}  # a0 and a1: one target item
    for seed in range(5):
        found = C.build_clusters(ids, cliques(A, B), targets, size=4, seed=seed)
        assert not any({"a0", "a1"} <= set(m) for m in found.clusters)
        assert sorted(sum(found.clusters, []) + found.fallback) == sorted(ids)


def test_a_shared_target_is_reached_through_any_of_its_records():
    """Classification-like: 6 labels of 12 records each. The mine stage names each label by its first
    record, so every edge ends on one of 6 records; each edge still brings in a record of that label,
    and nearly every record lands in a cluster of confusable labels, no label twice in one."""
    labels = [f"L{k}" for k in range(6)]
    ids = [f"{lab}-{j}" for lab in labels for j in range(12)]
    targets = {i: i.split("-")[0] for i in ids}
    confusable = {lab: [labels[(k + 1) % 6], labels[(k + 2) % 6]] for k, lab in enumerate(labels)}
    graph = {i: [f"{other}-0" for other in confusable[targets[i]]] for i in ids}
    found = C.build_clusters(ids, graph, targets, size=3, seed=0)
    assert sorted(sum(found.clusters, []) + found.fallback) == sorted(ids)  # each record placed once
    assert found.counts["clustered"] >= 0.9 * len(ids)
    for members in found.clusters:
        got = [targets[m] for m in members]
        assert len(set(got)) == len(got)
        # each member's label is a confusable label of another member's (the cluster is connected)
        assert all(any(t in confusable[o] or o in confusable[t] for o in got if o != t) for t in got)
    # the edges of unique targets (retrieval) are followed as before: a label per record, 6 cliques
    unique = {i: i for i in ids}
    assert C.build_clusters(ids, graph, unique, size=3, seed=0).counts["clustered"] < found.counts["clustered"]


def test_clustering_is_deterministic_for_a_seed():
    ids = [f"r{i}" for i in range(40)]
    graph = {r: [ids[(i * 7 + j) % 40] for j in (1, 2, 3)] for i, r in enumerate(ids)}
    one = C.build_clusters(ids, graph, {i: i for i in ids}, size=5, seed=3)
    assert one == C.build_clusters(ids, graph, {i: i for i in ids}, size=5, seed=3)
    assert one.clusters != C.build_clusters(ids, graph, {i: i for i in ids}, size=5, seed=4).clusters


def test_batches_are_whole_clusters_of_one_dataset_and_fallback_draws_are_counted():
    ids = A + B + LONERS
    plan = C.ClusterPlan({"D": C.build_clusters(ids, cliques(A, B), {i: i for i in ids}, size=4, seed=0)},
                         {"D": 1.0}, seed=0, global_batch=4)
    kinds = set()
    for step in range(30):
        batch = [r for _, r in plan.plan(step)]
        assert batch == [r for _, r in plan.plan(step)] and len(batch) == 4
        group = next((set(g) for g in (A, B) if batch[0] in g), None)
        if group is not None:  # a cluster fills the batch of 4: mutual neighbours only
            assert set(batch) == group
            kinds.add("cluster")
        else:  # a fallback record, then whatever follows: no record twice
            assert len(set(batch)) == 4
            kinds.add("fallback")
    assert kinds == {"cluster", "fallback"}
    draws = plan.draws(30)
    assert draws["clustered"] + draws["fallback"] == 120
    assert draws["fallback"] == sum(r in LONERS for s in range(30) for _, r in plan.plan(s)) > 0


class IdCollator:
    def __call__(self, sides, images):
        return {"text_hash": torch.tensor([int(hashlib.md5(s["text"].encode()).hexdigest()[:8], 16) for s in sides])}


def test_the_stream_reads_the_planned_records_from_the_shards(tmp_path):
    shards = write_test_shards(tmp_path / "shards", {"D": 10, "E": 4}, per_shard=3)
    rid = lambda d, i: f"{d}/original/{i}"  # noqa: E731
    graph = cliques([rid("D", i) for i in range(4)], [rid("D", i) for i in range(4, 8)])
    (tmp_path / "mined").mkdir()
    pq.write_table(pa.table({"id": list(graph), "negative_ids": list(graph.values())}), tmp_path / "mined" / "D.parquet")
    config = D.StreamConfig(seed=0, global_batch=4, slots_per_rank=2)

    def make():
        return C.ClusterStream(shards, config, IdCollator(), mined_root=tmp_path / "mined", cluster_size=4)

    one = make()
    assert one.clusterings["D"].counts["clusters"] == 2 and one.clusterings["D"].counts["no_neighbours"] == 2
    assert one.clusterings["E"].counts["fallback"] == 4  # no mined file: every record at random
    batches = [b for _, b in zip(range(6), iter(D.make_loader(one, 0)))]
    again = [b for _, b in zip(range(6), iter(D.make_loader(make(), 2)))]  # 2 workers: the same batches
    for step, (b, c) in enumerate(zip(batches, again)):
        assert b["step"] == step and b["ids"] == c["ids"]
        assert b["ids"] == [r for _, r in one.plan.plan(step)]
        assert torch.equal(b["target"][0]["text_hash"], c["target"][0]["text_hash"])
    # the bytes read by id are the ones the tar iterator gives
    raw = one.index.read("D", rid("D", 5))
    assert raw["json"] == next(s for s in D._read_part(D._Part(shards[1])) if s["__key__"] == raw["__key__"])["json"]
    assert set(one.summary(6)["draws"]) == {"clustered", "fallback"}


def test_every_record_is_drawn_as_often_and_datasets_keep_their_mixture_share():
    loners = [f"x{i}" for i in range(8)]
    other = [f"e{i}" for i in range(8)]
    d = C.build_clusters(A + B + loners, cliques(A, B), {i: i for i in A + B + loners}, size=4, seed=0)
    e = C.build_clusters(other, {}, {i: i for i in other}, size=4, seed=0)
    plan = C.ClusterPlan({"D": d, "E": e}, {"D": 0.5, "E": 0.5}, seed=0, global_batch=8)
    drawn = [x for step in range(300) for x in plan.plan(step)]
    share_e = sum(ds == "E" for ds, _ in drawn) / len(drawn)
    assert 0.45 < share_e < 0.55  # the mixture's share of positions, though D's clusters fill 4 at once
    in_d = [r for ds, r in drawn if ds == "D"]
    clustered, fallback = sum(r not in loners for r in in_d) / 8, sum(r in loners for r in in_d) / 8
    assert 0.85 < clustered / fallback < 1.15  # per record: a clustered record as often as a fallback one
