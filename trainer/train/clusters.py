"""Mined batches (B3-style): every batch made of clusters of mutually hard records.

Random in-batch negatives are mostly easy; B3 (Thirukovalluru et al., 2025) fills each batch with
records that are hard negatives of one another, taken from clusters of the kNN graph a trained
embedder gives. Here that graph is the mine stage's (`trainer.mine`): data/mined/<dataset>.parquet
lists per record the records whose targets it ranks as its best negatives (`negative_ids`, after the
false-negative filter), an edge from the record to each of them.

Clusters (`build_clusters`, per dataset, deterministic for a seed): the records are visited in a
seeded order; each one not yet taken starts a cluster that grows breadth first over the graph's
edges, either direction, nearest first (a record's own ranking, then the records that rank it), up
to ``size`` records. A record never joins a cluster holding its own target item (same target text
and image): in one batch that would be a false in-batch negative. The mine stage names a target
shared by several records (a class label, a VQA answer) by its first record only, so an edge is an
edge to the target: reaching it, the cluster takes the first record of that target's group not yet
placed (any of them is the same negative), and grows on from both. Without this, the edges of
classification and VQA datasets all end on a few records, and most records stay unclustered. A
seed left alone (its neighbours all placed) joins the cluster of its best-ranked neighbour's target
while that one has fewer than ``2 * size`` records, else it is a fallback record; so is every record
without neighbours (not in the mined file, or nothing kept for it). Fallback records are drawn at
random, one at a time.

Batches (`ClusterPlan`): for global step ``s`` an RNG seeded with ``(seed, s)`` picks a dataset, then
one of that dataset's units (a cluster, or a single fallback record) uniformly, without replacement
within the step, and puts its records in, shuffled, until the global batch is full (the last unit cut
short). A uniform unit puts every record of a dataset in batches equally often, clustered or not; a
dataset is picked with its mixture probability divided by its mean unit size, so that its share of
the batch positions is the mixture's. The batch is a pure function of (params, step): nothing is
streamed, records are read from the shards by id (`SampleIndex`), and resuming from a checkpoint
needs only the step.
"""

from __future__ import annotations

import json
import logging
import tarfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow.parquet as pq

from pipelines.schema import sample_key
from trainer.train.stream import BadSample, ContrastiveStream, Shard, StreamConfig, decode_sample

log = logging.getLogger(__name__)

CLUSTER_TAG = 0x434C5553  # "CLUS": keeps the cluster RNGs apart from the stream's
MAX_REDRAWS = 100


# --- the graph and its clusters ----------------------------------------------------------------
def load_graph(mined_root: Path, dataset: str) -> dict[str, list[str]]:
    """record id -> the ids of its mined negatives, best first (data/mined/<dataset>.parquet);
    empty when the dataset has no mined file (every record then falls back to random)."""
    path = Path(mined_root) / f"{dataset}.parquet"
    if not path.is_file():
        log.warning("%s missing: every record of %s is drawn at random (no kNN graph)", path, dataset)
        return {}
    table = pq.read_table(path, columns=["id", "negative_ids"])
    return dict(zip(table.column("id").to_pylist(), table.column("negative_ids").to_pylist()))


@dataclass
class Clustering:
    """One dataset's clusters (record ids, each list one cluster) and its fallback records."""

    clusters: list[list[str]]
    fallback: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def neighbours(graph: Mapping[str, list[str]], ids: list[str]) -> dict[str, list[str]]:
    """Undirected adjacency over ``ids``, nearest first: a record's own ranking, then the records that
    rank it (in ``ids`` order); edges to ids outside ``ids`` and self-edges are left out."""
    known = set(ids)
    out: dict[str, list[str]] = {i: [n for n in dict.fromkeys(graph.get(i) or []) if n in known and n != i]
                                 for i in ids}
    for i in ids:
        for n in graph.get(i) or []:
            if n in known and n != i and i not in out[n]:
                out[n].append(i)
    return out


def build_clusters(ids: list[str], graph: Mapping[str, list[str]], targets: Mapping[str, Any], size: int,
                   seed: int) -> Clustering:
    """The clusters of the kNN graph over ``ids`` (see the module docstring). ``targets``: record id
    -> its target item (records with equal items never share a cluster)."""
    adjacent = neighbours(graph, ids)
    groups = TargetGroups(ids, targets)
    order = [ids[i] for i in np.random.default_rng([seed, CLUSTER_TAG]).permutation(len(ids))]
    cluster_of: dict[str, int] = {}
    clusters: list[list[str]] = []
    fallback: list[str] = []
    counts = {"records": len(ids), "no_neighbours": 0, "attached": 0, "leftover": 0}
    for start in order:
        if start in groups.placed:
            continue
        if not adjacent[start]:
            counts["no_neighbours"] += 1
            fallback.append(groups.place(start))
            continue
        members = grow(start, adjacent, groups, size)
        if len(members) > 1:
            for m in members:
                cluster_of[groups.place(m)] = len(clusters)
            clusters.append(members)
            continue
        home = next((cluster_of[m] for n in adjacent[start] for m in groups.of(n) if m in cluster_of), None)
        if home is not None and len(clusters[home]) < 2 * size and \
                groups.target(start) not in {groups.target(m) for m in clusters[home]}:
            clusters[home].append(groups.place(start))
            cluster_of[start] = home
            counts["attached"] += 1
        else:
            counts["leftover"] += 1
            fallback.append(groups.place(start))
    counts.update(clusters=len(clusters), clustered=sum(map(len, clusters)), fallback=len(fallback))
    return Clustering(clusters, fallback, counts)


class TargetGroups:
    """The records of each target item, in ``ids`` order, and which records are placed (in a cluster
    or fallback): a group hands out its records not yet placed, first first."""

    def __init__(self, ids: list[str], targets: Mapping[str, Any]):
        self._target = {i: targets.get(i) for i in ids}
        self._groups: dict[Any, list[str]] = {}
        for i in ids:
            self._groups.setdefault(self._target[i], []).append(i)
        self._next: dict[Any, int] = {}  # per target: members before this index are all placed
        self.placed: set[str] = set()

    def target(self, record: str) -> Any:
        return self._target.get(record)

    def of(self, record: str) -> list[str]:
        """The records sharing ``record``'s target (``record`` among them)."""
        return self._groups.get(self.target(record), [record])

    def free(self, record: str, skip: set[str]) -> str | None:
        """The first record of ``record``'s target group neither placed nor in ``skip``."""
        group, t = self.of(record), self.target(record)
        k = self._next.get(t, 0)
        while k < len(group) and group[k] in self.placed:
            k += 1
        self._next[t] = k
        return next((m for m in group[k:] if m not in self.placed and m not in skip), None)

    def place(self, record: str) -> str:
        self.placed.add(record)
        return record


def grow(start: str, adjacent: Mapping[str, list[str]], groups: TargetGroups, size: int) -> list[str]:
    """A cluster from ``start``: breadth first over the targets its edges reach, nearest first, each
    target's first record not yet placed, at most ``size``, no two members sharing a target item."""
    members, items = [start], {groups.target(start)}
    queue = deque(adjacent[start])
    while queue and len(members) < size:
        n = queue.popleft()
        if groups.target(n) in items:
            continue
        m = groups.free(n, skip=set(members))
        if m is None:
            continue
        members.append(m)
        items.add(groups.target(m))
        queue.extend(adjacent[m])
        if m != n:
            queue.extend(adjacent[n])  # the records that rank this target rank ``m`` alike
    return members


# --- the batches ------------------------------------------------------------------------------
class ClusterPlan:
    """The records of every global step's batch, drawn from the datasets' clusterings."""

    def __init__(self, clusterings: Mapping[str, Clustering], probs: Mapping[str, float], seed: int,
                 global_batch: int):
        self.datasets = sorted(probs)
        self.seed, self.global_batch = seed, global_batch
        self.units = {d: clusterings[d].clusters + [[r] for r in clusterings[d].fallback] for d in self.datasets}
        self.fallback = {d: set(clusterings[d].fallback) for d in self.datasets}
        # positions per draw of d: its mean unit size; draws weighted so positions follow the mixture
        weights = [probs[d] * len(self.units[d]) / sum(map(len, self.units[d])) for d in self.datasets]
        self.probs = [w / sum(weights) for w in weights]

    def plan(self, step: int) -> list[tuple[str, str]]:
        """(dataset, record id) of every position of global step ``step``'s batch."""
        rng = np.random.default_rng([self.seed, CLUSTER_TAG, step])
        out: list[tuple[str, str]] = []
        used: dict[str, set[int]] = {d: set() for d in self.datasets}
        while len(out) < self.global_batch:
            d = self.datasets[rng.choice(len(self.datasets), p=self.probs)]
            units = self.units[d]
            if len(used[d]) == len(units):
                used[d] = set()  # every unit of the dataset is in this batch: repeats are unavoidable
            free = [i for i in range(len(units)) if i not in used[d]]
            pick = free[int(rng.integers(len(free)))]
            used[d].add(pick)
            members = [units[pick][i] for i in rng.permutation(len(units[pick]))]
            out.extend((d, r) for r in members[:self.global_batch - len(out)])
        return out

    def draws(self, steps: int) -> dict[str, int]:
        """Pairs the first ``steps`` batches draw from clusters and from fallback records."""
        clustered = fallback = 0
        for step in range(steps):
            for d, r in self.plan(step):
                fell = r in self.fallback[d]
                fallback += fell
                clustered += not fell
        return {"clustered": clustered, "fallback": fallback}


# --- reading records by id ----------------------------------------------------------------------
class SampleIndex:
    """Random access to the shards' samples: key -> (tar, member offsets), read with plain seeks."""

    def __init__(self, shards: list[Shard]):
        self.members: dict[tuple[str, str], dict[str, tuple[str, int, int]]] = {}
        for shard in shards:
            with tarfile.open(shard.path, "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    key, _, ext = Path(info.name).name.partition(".")
                    self.members.setdefault((shard.dataset, key), {})[ext.lower()] = (
                        shard.path, info.offset_data, info.size)

    def read(self, dataset: str, record_id: str) -> dict:
        """The raw sample (webdataset's layout: ``__key__``, ``__url__``, ``json``, image members as
        bytes) of one record; BadSample when the shards do not hold it."""
        key = sample_key(record_id)
        members = self.members.get((dataset, key))
        if members is None or "json" not in members:
            raise BadSample(f"record {record_id} is not in the shards of {dataset}")
        raw: dict[str, Any] = {"__key__": key, "__url__": members["json"][0]}
        for ext, (path, offset, size) in members.items():
            with open(path, "rb") as f:
                f.seek(offset)
                raw[ext] = f.read(size)
        return raw

    def records(self, dataset: str) -> dict[str, dict]:
        """id -> record JSON of every sample of ``dataset``, in key order."""
        out = {}
        for (d, key) in sorted(self.members):
            if d == dataset:
                record = json.loads(self.read_member(d, key, "json"))
                out[record["id"]] = record
        return out

    def read_member(self, dataset: str, key: str, ext: str) -> bytes:
        path, offset, size = self.members[(dataset, key)][ext]
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)


def target_item(record: Mapping[str, Any]) -> tuple:
    """A target's identity: its text and image bytes (the mine stage's item key)."""
    side = record.get("target") or {}
    return side.get("raw"), (side.get("image") or {}).get("sha256")


@dataclass(frozen=True)
class MinedBatching:
    """Round two's mined batches: the mine stage's folder (its kNN graphs) and the cluster size."""

    mined: Path
    cluster_size: int

    def to_dict(self) -> dict:
        return {"batching": "mined_clusters", "mined": str(self.mined), "cluster_size": self.cluster_size}


def dataset_clusters(index: SampleIndex, mined_root: Path, dataset: str, cluster_size: int, seed: int) -> Clustering:
    """One dataset's clustering as mined batches build it: its records, the mine stage's kNN graph,
    each record's target item, and an RNG seeded by (``seed``, dataset name)."""
    records = index.records(dataset)
    return build_clusters(list(records), load_graph(mined_root, dataset),
                          {i: target_item(r) for i, r in records.items()}, cluster_size,
                          seed=seed + zlib.crc32(dataset.encode("utf-8")))


class ClusterStream(ContrastiveStream):
    """`ContrastiveStream` whose batches come from `ClusterPlan` (``train.*`` of the run, the clusters
    of ``mined_root``'s kNN graphs with ``cluster_size`` records)."""

    def __init__(self, shards: list[Shard], config: StreamConfig, collator, *, mined_root: Path,
                 cluster_size: int, mixture="proportional", position=None):
        super().__init__(shards, config, collator, mixture=mixture, position=position)
        self.index = SampleIndex([s for s in shards if s.dataset in self.probs])
        self.clusterings = {}
        for d in self.datasets:
            self.clusterings[d] = dataset_clusters(self.index, mined_root, d, cluster_size, config.seed)
            log.info("mined batches, %s: %s", d, self.clusterings[d].counts)
        self.plan = ClusterPlan(self.clusterings, self.probs, config.seed, config.global_batch)

    def summary(self, steps: int) -> dict:
        """The clusterings' counts per dataset and the draws of ``steps`` steps (clustered, fallback)."""
        return {"datasets": {d: c.counts for d, c in self.clusterings.items()}, "draws": self.plan.draws(steps)}

    def make_batch(self, step: int, streams: dict, start) -> dict:
        c = self.config
        chosen = self.plan.plan(step)[c.rank * c.local_batch:(c.rank + 1) * c.local_batch]
        records, images, quarantined = [], [], 0
        rng = np.random.default_rng([c.seed, CLUSTER_TAG, step, c.rank])
        for dataset, record_id in chosen:
            for attempt in range(MAX_REDRAWS):
                try:
                    record, imgs = decode_sample(self.index.read(dataset, record_id), c.image_max_pixels,
                                                 c.hard_negatives)
                    self._validate(record, imgs)
                    break
                except BadSample as exc:  # replaced by a random record of the same dataset
                    quarantined += 1
                    log.warning("quarantined sample %s: %s", record_id, exc)
                    units = self.plan.units[dataset]
                    unit = units[int(rng.integers(len(units)))]
                    record_id = unit[int(rng.integers(len(unit)))]
            else:
                raise ValueError(f"dataset {dataset}: {MAX_REDRAWS} samples in a row could not be decoded or "
                                 "collated; the shards look corrupt or do not suit this backbone")
            records.append(record)
            images.append(imgs)
        batch = self.collate(records, images)
        batch.update(step=step, slot=self.slot_of(step), quarantined=quarantined, position={})
        return batch
