"""A local stand-in for the Hugging Face Hub, for tests of code that downloads with `huggingface_hub`.

It serves folders in the Hub layout as dataset (or model) repos and speaks the part of the Hub
protocol that huggingface_hub 2.4 uses for `snapshot_download`, `hf_hub_download`,
`HfApi.dataset_info`/`repo_info`, `HfApi.resolve_revision`, `HfApi.list_repo_tree` and
`HfApi.list_repo_files`:

    GET  /api/datasets/{repo}[/revision/{rev}]        repo info: id, sha (the commit), siblings
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]     tree listing (?recursive=), files carry `lfs`
    HEAD/GET /datasets/{repo}/resolve/{rev}/{path}    small files: 200 with X-Repo-Commit + ETag
                                                      LFS files: 302 to the "CDN" with X-Repo-Commit,
                                                      X-Linked-Etag (sha256), X-Linked-Size
    HEAD/GET {cdn}/cdn/{sha256}                       the LFS bytes, with HTTP Range support (206)

Model repos take the same routes with `/api/models/` and without the `/datasets` prefix; a repo id
is one namespace for both (add a model and a dataset under different ids).

The CDN is a second server on another port, i.e. another origin, as on the real Hub: the client then
takes the file metadata from the 302 itself and downloads from the Location (without auth).

Errors carry the `X-Error-Code` header the client maps to its exceptions (RepoNotFound,
RevisionNotFound, EntryNotFound). Every request is logged (`HubStandIn.requests`). Faults can be
injected once per file: `cut_next_transfer` (send the headers of the full body, then only N bytes and
close: the client sees a truncated transfer) and `fail_next_transfer` (an HTTP 500 on the download).

Use it through the `hub_standin` fixture (tests/conftest.py) or as a context manager:

    with HubStandIn() as hub:
        sha = hub.add_repo("TIGER-Lab/MMEB-eval", folder)
        env["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit


LFS_SUFFIXES = (".parquet", ".zip", ".tar", ".tar.gz", ".safetensors", ".bin")
_CHUNK = 64 * 1024


ROOT = Path(__file__).resolve().parents[2]


def client_env(home: Path, endpoint: str, offline: bool = False) -> dict:
    """Environment for a subprocess that talks to the stand-in through the real huggingface_hub
    client (which reads these variables at import time, hence a fresh interpreter)."""
    env = dict(os.environ)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HOME=str(home / "hf_home"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=str(ROOT),
    )
    return env


def fake_commit(repo_id: str, salt: str = "") -> str:
    """A stable 40-hex 'commit sha' for a repo (the same for every test run)."""
    return hashlib.sha1(f"commit:{repo_id}:{salt}".encode()).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, as the Hub reports in `oid` / ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class RepoFileEntry:
    path: str  # posix path in the repo
    local: Path  # file served
    size: int
    sha256: str
    blob_id: str  # git blob sha1 of the content (non-LFS) or of the LFS pointer (LFS)
    lfs: bool


@dataclass(frozen=True)
class LoggedRequest:
    server: str  # "hub" or "cdn"
    method: str  # HEAD / GET
    url: str  # path and query as requested
    repo_id: str | None  # the repo the request was about, when known
    file: str | None  # the repo file path the request was about, when known
    range: str | None  # the Range header, if any
    status: int = 0


@dataclass
class _Commit:
    sha: str
    files: dict[str, RepoFileEntry] = field(default_factory=dict)


class HubStandIn:
    """A running Hub stand-in on 127.0.0.1 (random ports). Thread-safe request log."""

    def __init__(self, *, lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES):
        self.lfs_suffixes = lfs_suffixes
        self._repos: dict[str, dict[str, _Commit]] = {}  # repo -> commit sha -> commit
        self._refs: dict[str, dict[str, str]] = {}  # repo -> ref name -> commit sha
        self._by_sha256: dict[str, tuple[str, RepoFileEntry]] = {}  # LFS oid -> (repo, entry)
        self._lock = threading.Lock()
        self._cuts: dict[tuple[str, str], int] = {}  # (repo, path) -> bytes to send before cutting
        self._failures: dict[tuple[str, str], int] = {}  # (repo, path) -> HTTP status to answer
        self.requests: list[LoggedRequest] = []
        self._hub = self._cdn = None
        self._threads: list[threading.Thread] = []

    # --- content -------------------------------------------------------------------------------
    def add_repo(
        self, repo_id: str, folder: str | Path, *, commit: str | None = None, refs: tuple[str, ...] = ("main",)
    ) -> str:
        """Serve every file under `folder` as dataset repo `repo_id` at a new commit, and point `refs`
        (branch/tag names) at it. Adding the same repo again adds another commit (older commits stay
        reachable by their sha). Returns the commit sha."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(folder)
        commits = self._repos.setdefault(repo_id, {})
        sha = commit or fake_commit(repo_id, str(len(commits)))
        entry = _Commit(sha)
        for local in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = local.relative_to(folder).as_posix()
            data = local.read_bytes()
            sha256 = hashlib.sha256(data).hexdigest()
            lfs = rel.endswith(self.lfs_suffixes)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
            blob_id = git_blob_sha1(pointer.encode() if lfs else data)
            f = RepoFileEntry(rel, local, len(data), sha256, blob_id, lfs)
            entry.files[rel] = f
            if lfs:
                self._by_sha256[sha256] = (repo_id, f)
        commits[sha] = entry
        for ref in refs:
            self._refs.setdefault(repo_id, {})[ref] = sha
        return sha

    def cut_next_transfer(self, repo_id: str, path: str, after_bytes: int) -> None:
        """The next download (GET of the bytes) of `path` sends the headers of the full response,
        then only `after_bytes` bytes, then closes the connection. One shot."""
        with self._lock:
            self._cuts[(repo_id, path)] = after_bytes

    def fail_next_transfer(self, repo_id: str, path: str, status: int = 500) -> None:
        """The next download (GET of the bytes) of `path` is answered with HTTP `status`. One shot."""
        with self._lock:
            self._failures[(repo_id, path)] = status

    # --- log queries ---------------------------------------------------------------------------
    def files_requested(self, repo_id: str | None = None, method: str | None = None) -> set[str]:
        """Repo file paths that saw a request (resolve or CDN), optionally for one repo / method."""
        return {
            r.file
            for r in list(self.requests)
            if r.file is not None
            and (repo_id is None or r.repo_id == repo_id)
            and (method is None or r.method == method)
        }

    def downloads(self, repo_id: str, path: str) -> list[LoggedRequest]:
        """The GET requests that fetched the bytes of one file (CDN GETs for LFS files)."""
        entries = [r for r in list(self.requests) if r.repo_id == repo_id and r.file == path and r.method == "GET"]
        return [r for r in entries if r.server == "cdn" or not self._entry_is_lfs(repo_id, path)]

    def _entry_is_lfs(self, repo_id: str, path: str) -> bool:
        return any(c.files.get(path) and c.files[path].lfs for c in self._repos.get(repo_id, {}).values())

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- server life cycle ---------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> HubStandIn:
        self._hub = _Server(("127.0.0.1", 0), _Handler, self, "hub")
        self._cdn = _Server(("127.0.0.1", 0), _Handler, self, "cdn")
        for server in (self._hub, self._cdn):
            t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- lookups used by the handler -----------------------------------------------------------
    def _commit(self, repo_id: str, revision: str) -> _Commit | None:
        commits = self._repos[repo_id]
        sha = self._refs.get(repo_id, {}).get(revision, revision)
        return commits.get(sha)

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def _take(self, table: dict, key) -> int | None:
        with self._lock:
            return table.pop(key, None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, hub: HubStandIn, role: str):
        super().__init__(address, handler)
        self.hub = hub
        self.role = role


_INFO = re.compile(r"^/api/(?:datasets|models)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/(?:datasets|models)/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")
_RESOLVE = re.compile(r"^/(?:datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<oid>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format, *args):  # keep pytest output clean; the hub keeps its own log
        pass

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    # --- routing -------------------------------------------------------------------------------
    def _dispatch(self, head: bool) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        route = split.path
        self._repo = self._file = None
        self._status = 0
        try:
            if self.server.role == "cdn":
                m = _CDN.match(route)
                if not m or m["oid"] not in hub._by_sha256:
                    return self._error(404, "EntryNotFound", "no such object")
                # content-addressed like the real CDN; the signed URL names the repo file it was issued for
                query = parse_qs(split.query)
                repo_id, entry = hub._by_sha256[m["oid"]]
                repo_id = query.get("repo", [repo_id])[0]
                entry = RepoFileEntry(**{**entry.__dict__, "path": query.get("path", [entry.path])[0]})
                self._repo, self._file = repo_id, entry.path
                return self._send_file(entry, head, commit=None)
            if m := _TREE.match(route):
                return self._tree(m["repo"], unquote(m["rev"]), unquote(m["path"] or ""), parse_qs(split.query))
            if m := _INFO.match(route):
                return self._info(m["repo"], unquote(m["rev"] or "main"))
            if m := _RESOLVE.match(route):
                return self._resolve(m["repo"], unquote(m["rev"]), unquote(m["path"]), head)
            return self._error(404, None, f"no route for {route}")
        finally:
            hub._log(
                LoggedRequest(
                    self.server.role, "HEAD" if head else "GET", self.path, self._repo, self._file,
                    self.headers.get("Range"), self._status,
                )
            )

    def _lookup(self, repo_id: str, revision: str):
        hub = self.server.hub
        self._repo = repo_id
        if repo_id not in hub._repos:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return None
        commit = hub._commit(repo_id, revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return commit

    def _info(self, repo_id: str, revision: str) -> None:
        commit = self._lookup(repo_id, revision)
        if commit is None:
            return
        body = {
            "_id": fake_commit(repo_id, "id")[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        }
        self._json(body, {"X-Repo-Commit": commit.sha})

    def _tree(self, repo_id: str, revision: str, path: str, query: dict) -> None:
        commit = self._lookup(repo_id, revision)
        if commit is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{path.rstrip('/')}/" if path else ""
        if path and path in commit.files:
            return self._error(400, None, f"{path} is a file, not a folder")
        items: dict[str, dict] = {}
        for rel, f in sorted(commit.files.items()):
            if not rel.startswith(prefix):
                continue
            parts = rel[len(prefix) :].split("/")
            # every folder between `path` and the file is listed as a directory entry
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folder = prefix + "/".join(parts[:depth])
                items.setdefault(folder, {"type": "directory", "oid": git_blob_sha1(folder.encode()), "size": 0, "path": folder})
            if not recursive and len(parts) > 1:
                continue
            item = {"type": "file", "oid": f.blob_id, "size": f.size, "path": rel}
            if f.lfs:
                item["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            items[rel] = item
        if path and not items:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}")
        self._json([items[k] for k in sorted(items)], {"X-Repo-Commit": commit.sha})

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        commit = self._lookup(repo_id, revision)
        if commit is None:
            return
        self._file = path
        entry = commit.files.get(path)
        if entry is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}", {"X-Repo-Commit": commit.sha})
        if entry.lfs:
            location = f"{self.server.hub.cdn_endpoint}/cdn/{entry.sha256}?repo={quote(repo_id)}&path={quote(path)}"
            self._status = 302
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("X-Repo-Commit", commit.sha)
            self.send_header("X-Linked-Etag", f'"{entry.sha256}"')
            self.send_header("X-Linked-Size", str(entry.size))
            self.send_header("ETag", f'"{entry.blob_id}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_file(entry, head, commit=commit.sha)

    # --- responses -----------------------------------------------------------------------------
    def _send_file(self, entry: RepoFileEntry, head: bool, commit: str | None) -> None:
        hub = self.server.hub
        key = (self._repo, entry.path)
        if not head and (status := hub._take(hub._failures, key)) is not None:
            return self._error(status, None, "injected failure")
        start, end = 0, entry.size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng:
            m = _RANGE.match(rng.strip())
            if not m or int(m["start"]) >= entry.size:
                return self._error(416, None, f"bad range {rng}", {"Content-Range": f"bytes */{entry.size}"})
            start = int(m["start"])
            end = min(int(m["end"]), entry.size - 1) if m["end"] else entry.size - 1
            status = 206
        length = end - start + 1
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.sha256 if entry.lfs else entry.blob_id}"')
        if commit is not None:
            self.send_header("X-Repo-Commit", commit)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if head:
            return
        cut = hub._take(hub._cuts, key)
        budget = length if cut is None else min(cut, length)
        with open(entry.local, "rb") as f:
            f.seek(start)
            while budget > 0:
                chunk = f.read(min(_CHUNK, budget))
                if not chunk:
                    break
                self.wfile.write(chunk)
                budget -= len(chunk)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True  # the peer sees a body shorter than Content-Length

    def _json(self, body, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


# --- a tiny MMEB in the Hub layout, for tests that need one without the synthetic generator -------
def _zip_bytes(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in sorted(members.items()):
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 10, 1, 0, 0, 0)), data)
    return buf.getvalue()


def write_hub_layout(
    root: str | Path,
    *,
    train_subsets=("Alpha", "Beta", "Gamma"),
    eval_subsets=("Alpha", "Delta", "CIFAR-100"),
    splits=("original", "diverse_instruction"),
    rows: int = 3,
    big_zip: str | None = None,
    big_zip_bytes: int = 11 * 1024 * 1024,
) -> Path:
    """Write `root/MMEB-train` and `root/MMEB-eval` in the Hub layout: per train subset one parquet per
    split (plus the legacy `train` one) and `images_zip/<Subset>.zip`; per eval dataset a test parquet;
    eval `images.zip`; a README.md card per repo. Rows follow the MMEB columns. `big_zip` names a train
    subset whose zip gets one `big_zip_bytes` random (seeded) member, to exercise resumed transfers
    beyond huggingface_hub's 10 MiB download chunk. Deterministic. Returns `root`."""
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    train, evals = root / "MMEB-train", root / "MMEB-eval"
    for subset in train_subsets:
        images = {f"{subset}/Train/{i}.jpg": f"{subset}-{i}".encode() * 8 for i in range(rows)}  # unpack into images/
        if subset == big_zip:
            images[f"{subset}/Train/big.bin"] = random.Random(subset).randbytes(big_zip_bytes)
        (train / "images_zip").mkdir(parents=True, exist_ok=True)
        (train / "images_zip" / f"{subset}.zip").write_bytes(_zip_bytes(images))
        for split in (*splits, "train"):
            qry = {
                "original": "<|image_1|>\nRepresent the given image for classification\n",
                "diverse_instruction": "Represent <|image_1|> for classification.",
                "train": "<|image_1|> Represent the given image for classification\n",  # legacy, pre token fix
            }.get(split, f"{split}: <|image_1|>")
            table = pa.table(
                {
                    "qry": [qry] * rows,
                    "qry_image_path": [f"images/{subset}/Train/{i}.jpg" for i in range(rows)],
                    "pos_text": [f"label {i}" for i in range(rows)],
                    "pos_image_path": [""] * rows,
                    "neg_text": [""] * rows,
                    "neg_image_path": [""] * rows,
                }
            )
            (train / subset).mkdir(parents=True, exist_ok=True)
            pq.write_table(table, train / subset / f"{split}-00000-of-00001.parquet")
    (train / "README.md").write_text("---\nconfigs: []\n---\n# MMEB-train (test fixture)\n")
    eval_images = {}
    for ds in eval_subsets:
        table = pa.table(
            {
                "qry_text": ["<|image_1|>\nRepresent the given image for classification\n"] * rows,
                "qry_img_path": [f"{ds}/{i}.jpg" for i in range(rows)],
                "tgt_text": [[f"label {i}", f"label {i + 1}"] for i in range(rows)],
                "tgt_img_path": [["", ""] for _ in range(rows)],
            }
        )
        (evals / ds).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, evals / ds / "test-00000-of-00001.parquet")
        eval_images.update({f"{ds}/{i}.jpg": f"{ds}-{i}".encode() * 8 for i in range(rows)})
    (evals / "images.zip").write_bytes(_zip_bytes(eval_images))
    (evals / "README.md").write_text("---\nconfigs: []\n---\n# MMEB-eval (test fixture)\n")
    return root
