"""A loopback server speaking the Hugging Face Hub's HTTP API, for tests of the real client.

It implements what ``huggingface_hub`` calls to create repos, commit (regular files inline,
binary or large files through the LFS batch API and a PUT to the returned href), list files and
commits, describe paths (``paths-info``), and download (``resolve``, with HTTP range requests:
``bytes_sent`` counts the body bytes sent per file). It listens on 127.0.0.1 only, keeps blobs in
a folder and repo histories in memory (a commit stores its changes; the head is kept whole), and
enforces the Hub's limits when given :class:`Limits`: files per repo, entries per folder and
files per commit (a commit over one is refused with 422, or only counted in ``violations`` with
``reject=False``), and commits per hour per repo (HTTP 429 with Retry-After, on the server's
``clock``, which a test or benchmark may run in simulated time). It lets tests inject faults per
endpoint:

- ``status``: answer with an HTTP status (e.g. 429 with ``Retry-After``, 500) and do nothing,
- ``apply_then_drop``: apply a commit, then close the connection without answering,
- ``apply_then_delay``: apply a commit, then answer only after ``delay_s`` (a client timeout),
- ``hold``: wait (before applying) until the test calls :meth:`HubServer.release`,
- ``hold_then_reject``: wait for :meth:`HubServer.release`, then answer ``status`` without applying,
- ``apply_then_hold``: apply a commit, then wait for :meth:`HubServer.release` before answering.

The client's xet transfer protocol is not implemented: run the client with
``HF_HUB_DISABLE_XET=1`` so that LFS-mode files go through the LFS batch API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files at least this large, or with a NUL byte in their sample, are stored through LFS.
LFS_THRESHOLD = 4096
_TYPES = {"datasets": "dataset", "models": "model", "spaces": "space"}
_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+?)"


class ParentMoved(Exception):
    """A commit's parentCommit is no longer the branch head."""


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git_blob_sha1_of_file(path: Path) -> str:
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StoredFile:
    size: int
    sha256: str
    git_oid: str
    lfs: bool


@dataclass
class Commit:
    oid: str
    title: str
    message: str
    date: str
    changes: dict[str, StoredFile | None]  # path -> what it became (None: deleted)
    changed: list[str]
    time: float = 0.0  # on the server's clock


@dataclass(frozen=True)
class Limits:
    """The Hub's documented guidance and reported commit quota, per repo."""

    max_files_per_repo: int = 100_000
    max_entries_per_folder: int = 10_000
    max_files_per_commit: int = 100
    commits_per_hour: int = 128
    reject: bool = True  # refuse a commit that breaks a file limit (else only count it)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    files: dict[str, StoredFile] = field(default_factory=dict)  # at the head
    folder_entries: Counter = field(default_factory=Counter)  # folder ("" = root) -> entries directly in it
    folders: set[str] = field(default_factory=set)
    max_commit_files: int = 0

    @property
    def head(self) -> str:
        return self.commits[-1].oid if self.commits else "0" * 40

    def files_at(self, oid: str) -> dict[str, StoredFile] | None:
        """The files as of commit ``oid`` (None if there is no such commit)."""
        if oid == self.head:
            return self.files
        if not any(c.oid == oid for c in self.commits):
            return None
        files: dict[str, StoredFile] = {}
        for commit in self.commits:
            for path, stored in commit.changes.items():
                if stored is None:
                    files.pop(path, None)
                else:
                    files[path] = stored
            if commit.oid == oid:
                return files
        return None

    def add_path(self, path: str, stored: StoredFile) -> None:
        """Put a file at the head, counting the entries of every folder it creates or enters."""
        if path not in self.files:
            parts = path.split("/")
            for depth in range(len(parts)):
                parent, child = "/".join(parts[:depth]), "/".join(parts[:depth + 1])
                if depth == len(parts) - 1 or child not in self.folders:
                    self.folder_entries[parent] += 1
                if depth < len(parts) - 1:
                    self.folders.add(child)
        self.files[path] = stored

    @property
    def max_folder_entries(self) -> int:
        return max(self.folder_entries.values(), default=0)


@dataclass
class Fault:
    endpoint: str
    action: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay_s: float = 0.0
    times: int = 1
    repo_id: str | None = None


class HubServer:
    """Start with ``with HubServer(tmp_path, token=...) as hub:``; point ``HF_ENDPOINT`` at ``hub.endpoint``."""

    def __init__(self, root: Path, token: str | None = None, limits: Limits | None = None,
                 clock: Callable[[], float] = time.time):
        self.blob_dir = Path(root) / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.limits = limits
        self.clock = clock
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.moved_parents = 0  # commits refused with 412: their parentCommit was not the head
        self.bytes_sent: Counter = Counter()  # (repo id, path) -> body bytes sent by resolve
        self.violations: list[str] = []  # limits broken by commits accepted with reject=False
        self.rate_limited = 0  # commits answered 429 by the commit quota
        self.faults: list[Fault] = []
        self.held = threading.Event()
        self._release = threading.Event()
        self._lock = threading.RLock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- fault injection -------------------------------------------------------------------
    def inject(self, endpoint: str, action: str = "status", **kwargs: Any) -> Fault:
        """Make the next ``times`` calls to ``endpoint`` (create, preupload, lfs_batch, commit,
        tree, commits, info, resolve) misbehave as ``action`` says."""
        fault = Fault(endpoint=endpoint, action=action, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def release(self) -> None:
        """Let a held request go on."""
        self._release.set()

    def _take_fault(self, endpoint: str, repo_id: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.endpoint == endpoint and fault.repo_id in (None, repo_id) and fault.times > 0:
                    fault.times -= 1
                    return fault
        return None

    # -- inspection ------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def read(self, repo_id: str, path: str, repo_type: str = "dataset") -> bytes:
        return self.blob(self.repo(repo_id, repo_type).files[path].sha256)

    def writes_per_path(self, repo_id: str, repo_type: str = "dataset") -> Counter:
        """How many commits wrote each path (1 everywhere means nothing was committed twice)."""
        return Counter(p for c in self.repo(repo_id, repo_type).commits for p in c.changed)

    def blob(self, sha256: str) -> bytes:
        return (self.blob_dir / sha256).read_bytes()

    def store_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.blob_dir / sha
        if not path.exists():
            tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def commit_quota_wait(self, repo: Repo) -> float:
        """Seconds until the repo may commit again under ``limits.commits_per_hour`` (0: now)."""
        if self.limits is None:
            return 0.0
        now = self.clock()
        recent = sorted(c.time for c in repo.commits if c.time > now - 3600.0)
        if len(recent) < self.limits.commits_per_hour:
            return 0.0
        return recent[-self.limits.commits_per_hour] + 3600.0 - now

    def apply_commit(self, repo: Repo, lines: list[dict]) -> Commit:
        """Apply an NDJSON commit; ValueError (answered 422) when it is malformed or breaks a limit,
        ParentMoved (answered 412, as the Hub does) when its ``parentCommit`` is not the head."""
        header = next(line["value"] for line in lines if line["key"] == "header")
        with self._lock:
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head:
                self.moved_parents += 1
                raise ParentMoved(f"A commit has happened since {parent}. Please refresh and try again.")
            changes: dict[str, StoredFile | None] = {}
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    sha = self.store_blob(data)
                    changes[value["path"]] = StoredFile(len(data), sha, git_blob_sha1(data), lfs=False)
                elif key == "lfsFile":
                    blob = self.blob_dir / value["oid"]
                    if not blob.exists():
                        raise ValueError(f"LFS object {value['oid']} was never uploaded")
                    changes[value["path"]] = StoredFile(blob.stat().st_size, value["oid"],
                                                        _git_blob_sha1_of_file(blob), lfs=True)
                elif key == "deletedFile":
                    changes[value["path"]] = None
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    changes.update({p: None for p in repo.files if p.startswith(prefix)})
            self._check_limits(repo, changes)
            for path, stored in changes.items():
                if stored is None:
                    if repo.files.pop(path, None) is not None:
                        parent = path.rpartition("/")[0]
                        repo.folder_entries[parent] -= 1
                else:
                    repo.add_path(path, stored)
            changed = [p for p, stored in changes.items() if stored is not None]
            repo.max_commit_files = max(repo.max_commit_files, len(changed))
            oid = hashlib.sha1(f"{repo.head}{header['summary']}{time.time_ns()}{len(repo.files)}".encode()).hexdigest()
            commit = Commit(oid=oid, title=header["summary"],
                            message=(header["summary"] + "\n\n" + header.get("description", "")).strip(),
                            date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), changes=changes,
                            changed=changed, time=self.clock())
            repo.commits.append(commit)
            return commit

    def _check_limits(self, repo: Repo, changes: dict[str, StoredFile | None]) -> None:
        if self.limits is None:
            return
        limits = self.limits
        added = [p for p, stored in changes.items() if stored is not None and p not in repo.files]
        broken = []
        if len(changes) > limits.max_files_per_commit:
            broken.append(f"{len(changes)} files in one commit (limit {limits.max_files_per_commit})")
        if len(repo.files) + len(added) > limits.max_files_per_repo:
            broken.append(f"{len(repo.files) + len(added)} files in the repo (limit {limits.max_files_per_repo})")
        more: Counter = Counter()  # entries the commit adds, per folder
        new_folders: set[str] = set()
        for path in added:
            parts = path.split("/")
            for depth in range(len(parts)):
                parent, child = "/".join(parts[:depth]), "/".join(parts[:depth + 1])
                if depth == len(parts) - 1 or (child not in repo.folders and child not in new_folders):
                    more[parent] += 1
                if depth < len(parts) - 1:
                    new_folders.add(child)
        crowded = [(f or "/", repo.folder_entries[f] + n) for f, n in more.items()
                   if repo.folder_entries[f] + n > limits.max_entries_per_folder]
        if crowded:
            folder, count = max(crowded, key=lambda item: item[1])
            broken.append(f"{count} entries in folder {folder} (limit {limits.max_entries_per_folder})")
        if broken and limits.reject:
            raise ValueError("; ".join(broken))
        self.violations += broken


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    # -- plumbing --------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, head_only: bool = False) -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def _authorized(self) -> bool:
        if self.hub.token is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _dispatch(self, method: str) -> None:
        self.hub.requests.append((method, self.path))
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        for route_method, pattern, endpoint, handler in _ROUTES:
            match = pattern.fullmatch(path) if route_method == method else None
            if match is None:
                continue
            groups = match.groupdict()
            repo_id = f"{groups['ns']}/{groups['name']}" if "ns" in groups else None
            if endpoint != "lfs_put" and not self._authorized():
                self._body()
                return self._error(401, "Invalid credentials in Authorization header")
            fault = self.hub._take_fault(endpoint, repo_id)
            if fault is not None and fault.action == "status":
                self._body()
                return self._send(fault.status, {"error": fault.body or f"injected {fault.status}"},
                                  fault.headers)
            if fault is not None and fault.action in ("hold", "hold_then_reject"):
                self.hub.held.set()
                self.hub._release.wait(60)
            if fault is not None and fault.action == "hold_then_reject":
                self._body()
                return self._send(fault.status, {"error": fault.body or f"injected {fault.status}"})
            return handler(self, groups, query, fault, method == "HEAD")
        self._error(404, f"no route for {method} {path}")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _repo(self, groups: dict) -> Repo | None:
        repo_type = _TYPES.get(groups.get("type") or "models", "model")
        repo = self.hub.repos.get((repo_type, f"{groups['ns']}/{groups['name']}"))
        if repo is None:
            self._error(404, "Repository not found", "RepoNotFound")
        return repo

    # -- endpoints -------------------------------------------------------------------------
    def create(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        payload = json.loads(self._body())
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._send(409, {"error": "You already created this repo", "url": url})
            private = payload.get("private", payload.get("visibility") == "private")
            self.hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, bool(private))
        self._send(200, {"url": url, "name": repo_id})

    def info(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        repo = self._repo(groups)
        if repo is not None:
            self._send(200, {"id": repo.repo_id, "sha": repo.head, "private": repo.private,
                             "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def preupload(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        payload = json.loads(self._body())
        repo = self._repo(groups)
        if repo is None:
            return
        answers = []
        for item in payload["files"]:
            lfs = item["size"] >= LFS_THRESHOLD or b"\0" in base64.b64decode(item["sample"])
            stored = repo.files.get(item["path"])
            oid = None if stored is None else (stored.sha256 if stored.lfs else stored.git_oid)
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": answers, "commitOid": repo.head})

    def lfs_batch(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        payload = json.loads(self._body())
        if self._repo(groups) is None:
            return
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.hub.blob_dir / obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"{self.hub.endpoint}/lfs-upload/{obj['oid']}",
                                               "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def lfs_put(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != groups["oid"]:
            return self._error(400, "content does not match the object id")
        self.hub.store_blob(data)
        self._send(200, {})

    def commit(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        body = self._body()
        repo = self._repo(groups)
        if repo is None:
            return
        wait = self.hub.commit_quota_wait(repo)
        if wait > 0 and self.hub.limits is not None:
            self.hub.rate_limited += 1
            return self._send(429, {"error": "You have exceeded the rate limit for repository commits "
                                             f"({self.hub.limits.commits_per_hour} per hour)."},
                              {"Retry-After": str(int(wait) + 1)})
        try:
            commit = self.hub.apply_commit(repo, [json.loads(line) for line in body.splitlines() if line])
        except ParentMoved as exc:
            return self._error(412, str(exc))
        except (ValueError, KeyError, StopIteration) as exc:
            return self._error(422, f"invalid commit: {exc}")
        if fault is not None and fault.action == "apply_then_drop":
            self.close_connection = True
            return
        if fault is not None and fault.action == "apply_then_delay":
            time.sleep(fault.delay_s)
        if fault is not None and fault.action == "apply_then_hold":
            self.hub.held.set()
            self.hub._release.wait(60)
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._send(200, {"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                         "commitUrl": f"{self.hub.endpoint}/{prefix}{repo.repo_id}/commit/{commit.oid}"})

    def tree(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        repo = self._repo(groups)
        if repo is None:
            return
        base = (groups.get("path") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for path, stored in sorted(repo.files.items()):
            if base and not path.startswith(base + "/"):
                continue
            rest = path[len(base) + 1:] if base else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add("/".join(([base] if base else []) + parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(_file_entry(path, stored))
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "path": f}
                    for f in sorted(folders)]
        self._send(200, entries)

    def commits(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        repo = self._repo(groups)
        if repo is not None:
            self._send(200, [{"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                              "authors": [{"user": "user"}]} for c in reversed(repo.commits)])

    def _files_at(self, repo: Repo, rev: str) -> tuple[str, dict[str, StoredFile]] | None:
        oid = repo.head if rev == "main" else rev
        files = repo.files_at(oid) if repo.commits else None
        return None if files is None else (oid, files)

    def resolve(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        repo = self._repo(groups)
        if repo is None:
            return
        found = self._files_at(repo, groups["rev"])
        stored = found[1].get(groups["path"]) if found else None
        if found is None or stored is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": found[0], "ETag": f'"{stored.git_oid}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        wanted = _byte_range(self.headers.get("Range"), stored.size)
        if wanted is None:
            return self._error(416, f"range {self.headers.get('Range')} not satisfiable for {stored.size} bytes")
        start, end = wanted
        status = 200
        if self.headers.get("Range"):
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{stored.size}"
        with open(self.hub.blob_dir / stored.sha256, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        if not head:
            self.hub.bytes_sent[(repo.repo_id, groups["path"])] += len(data)
        self._send(status, raw=data, headers=headers, head_only=head)

    def validate_yaml(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        """The Hub's check of a README.md's metadata, as far as this server knows it: the front
        matter must parse as a YAML mapping, and each config name its data files."""
        import yaml

        content = json.loads(self._body())["content"]
        errors = []
        if content.startswith("---\n"):
            try:
                metadata = yaml.safe_load(content.split("---\n")[1])
            except yaml.YAMLError as exc:
                metadata, errors = None, [{"message": f"invalid YAML: {exc}"}]
            if not errors and not isinstance(metadata, dict):
                errors.append({"message": "the metadata is not a mapping"})
            for config in (metadata or {}).get("configs", []) if not errors else []:
                if not config.get("config_name") or not config.get("data_files"):
                    errors.append({"message": f"config {config!r} needs config_name and data_files"})
        if errors:
            return self._send(400, {"errors": errors})
        self._send(200, {"warnings": []})

    def paths_info(self, groups: dict, query: dict, fault: Fault | None, head: bool) -> None:
        form = parse_qs(self._body().decode())
        repo = self._repo(groups)
        if repo is None:
            return
        found = self._files_at(repo, groups["rev"])
        files = found[1] if found else {}
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            stored = files.get(path)
            if stored is not None:
                entries.append(_file_entry(path, stored))
            elif any(p.startswith(path + "/") for p in files):
                entries.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        self._send(200, entries)


def _file_entry(path: str, stored: StoredFile) -> dict[str, Any]:
    """A file as the tree and paths-info endpoints describe it."""
    entry: dict[str, Any] = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
    if stored.lfs:
        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": 134}
    return entry


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a ``Range: bytes=a-b`` / ``a-`` / ``-n`` header (the whole file without
    one); None when it cannot be satisfied."""
    if not header:
        return 0, size
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        start, end = max(0, size - int(match[2])), size
    else:
        start = int(match[1])
        end = min(size, int(match[2]) + 1) if match[2] else size
    return (start, end) if start < end or size == 0 else None


_API = rf"/api/(?P<type>datasets|models|spaces)/{_REPO}"
_ROUTES = [
    ("POST", re.compile(r"/api/repos/create"), "create", _Handler.create),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml", _Handler.validate_yaml),
    ("GET", re.compile(rf"{_API}(/revision/(?P<rev>[^/]+))?"), "info", _Handler.info),
    ("POST", re.compile(rf"{_API}/preupload/(?P<rev>[^/]+)"), "preupload", _Handler.preupload),
    ("POST", re.compile(rf"{_API}/commit/(?P<rev>[^/]+)"), "commit", _Handler.commit),
    ("GET", re.compile(rf"{_API}/tree/(?P<rev>[^/]+)(?P<path>/.*)?"), "tree", _Handler.tree),
    ("GET", re.compile(rf"{_API}/commits/(?P<rev>[^/]+)"), "commits", _Handler.commits),
    ("POST", re.compile(rf"{_API}/paths-info/(?P<rev>[^/]+)"), "paths_info", _Handler.paths_info),
    ("POST", re.compile(rf"/((?P<type>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/batch"),
     "lfs_batch", _Handler.lfs_batch),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_put", _Handler.lfs_put),
    ("GET", re.compile(rf"/((?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
     "resolve", _Handler.resolve),
    ("HEAD", re.compile(rf"/((?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"),
     "resolve", _Handler.resolve),
]
