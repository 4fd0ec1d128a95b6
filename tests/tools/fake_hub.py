"""Minimal fake Hugging Face Hub for offline tests (stdlib only).

Serves just enough of the Hub HTTP API for huggingface_hub 2.x to:
create_repo, whoami, upload_folder/upload_file/create_commit (regular files inline,
large files via classic LFS "basic" transfer, or via Xet with a local:// CAS),
repo_info, list_repo_files/list_repo_tree, hf_hub_download and snapshot_download.

Usage:
    hub = FakeHub(lfs_mode="lfs").start()   # hub.url -> "http://127.0.0.1:<port>"
    hub.add_files("dataset", "someone/docs", {"data/train.parquet": b"..."})  # serve a dataset repo
    hub.commit_delay, hub.fail_commits = 1.0, 2   # slow commits down; make the next 2 fail
    ...
    hub.stop()

Copied from ../shared/tools/fake_hub.py; add_files, commit_delay, fail_commits, history, the
commits' "time" and client_env are hfgpt's additions. The legacy-id redirect (gpt2-medium -> 307 ->
openai-community/gpt2-medium, LEGACY_IDS) is ../shared/tools/fake_hub.py's, put back here (issue 10).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npy", ".npz",
                ".pkl", ".pickle", ".arrow", ".parquet", ".gz", ".zip", ".tar", ".model", ".joblib")
LFS_THRESHOLD = 10 * 1024 * 1024  # same 10MB limit as the real Hub
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class FileEntry:
    def __init__(self, *, data: bytes | None, size: int, sha256: str, lfs: bool, xet_hash: str | None = None):
        self.data, self.size, self.sha256, self.lfs, self.xet_hash = data, size, sha256, lfs, xet_hash

    @property
    def blob_oid(self) -> str:  # git OID: of the content, or of the LFS pointer file
        return git_blob_oid(lfs_pointer(self.sha256, self.size) if self.lfs else self.data)

    def tree_json(self, path: str) -> dict:
        out = {"type": "file", "oid": self.blob_oid, "size": self.size, "path": path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size,
                          "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        if self.xet_hash:
            out["xetHash"] = self.xet_hash
        return out


class Repo:
    def __init__(self, repo_type: str, repo_id: str, private: bool):
        self.type, self.id, self.private, self.created = repo_type, repo_id, private, _now()
        self.commits: dict[str, dict] = {}
        self.refs: dict[str, str] = {}
        ga = FileEntry(data=GITATTRIBUTES, size=len(GITATTRIBUTES), sha256=hashlib.sha256(GITATTRIBUTES).hexdigest(),
                       lfs=False)
        self.add_commit("main", {".gitattributes": ga}, "initial commit", None)

    def add_commit(self, ref: str, files: dict, title: str, parent: str | None) -> str:
        oid = uuid.uuid4().hex + uuid.uuid4().hex[:8]  # 40 hex chars, like a git sha1
        self.commits[oid] = {"files": files, "title": title, "parent": parent, "date": _now(), "time": time.time()}
        self.refs[ref] = oid
        return oid

    def resolve(self, revision: str) -> str:
        revision = unquote(revision)
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


class FakeHub:
    """In-memory Hub. lfs_mode: 'lfs' (classic LFS batch/basic PUT), 'regular' (everything inline),
    or 'xet' (large files through hf_xet with casUrl=local://<xet_dir>)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, user: str = "test-user",
                 token: str | None = None, lfs_mode: str = "lfs", xet_dir: str | None = None):
        assert lfs_mode in ("lfs", "regular", "xet")
        self.user, self.token, self.lfs_mode, self.xet_dir = user, token, lfs_mode, xet_dir
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path) log for assertions
        self.commit_delay = 0.0  # seconds each commit request waits before it is applied
        self.fail_commits = 0  # the next this many commit requests fail with HTTP fail_status
        self.fail_status = 400  # huggingface_hub retries 5xx itself (for ~25 s); a 4xx reaches the caller at once
        # ids without a namespace that the real Hub answers with a 307 to their canonical repo
        self.legacy = dict(LEGACY_IDS)
        self.lock = threading.RLock()
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def history(self, repo_type: str, repo_id: str, ref: str = "main") -> list[dict]:
        """The commits of a branch, oldest first (the initial commit included)."""
        repo, out = self.repo(repo_type, repo_id), []
        oid = repo.refs[ref]
        while oid is not None:
            out.append({"oid": oid, **repo.commits[oid]})
            oid = repo.commits[oid]["parent"]
        return out[::-1]

    def start(self) -> "FakeHub":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ helpers
    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if self.lfs_mode == "regular":
            return "regular"
        if size >= LFS_THRESHOLD or path.endswith(LFS_SUFFIXES) or b"\0" in sample:
            return "lfs"
        return "regular"

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.type]}{repo.id}"

    def add_files(self, repo_type: str, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Commit files (path -> content) to a repo, creating it if needed, without the HTTP API:
        how a test puts a dataset "on the Hub" for the client to download. Returns the commit id."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
            if repo is None:
                repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
            head = repo.refs["main"]
            tree = dict(repo.commits[head]["files"])
            for path, data in files.items():
                tree[path] = FileEntry(data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                       lfs=self.upload_mode(path, len(data), data[:512]) == "lfs")
            return repo.add_commit("main", tree, f"add {len(files)} files", head)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-request: nothing to say
            super().handle_error(request, client_address)


API = re.compile(r"^/api/(?P<t>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)(?P<rest>/.*)?$")
RESOLVE = re.compile(r"^/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
LFS_BATCH = re.compile(r"^/(?:(?P<t>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
LFS_OBJ = re.compile(r"^/__lfs/(?P<oid>[0-9a-f]{64})(?P<verify>/verify)?$")


LEGACY_IDS = {"gpt2": "openai-community/gpt2", "gpt2-medium": "openai-community/gpt2-medium",
              "gpt2-large": "openai-community/gpt2-large", "gpt2-xl": "openai-community/gpt2-xl",
              "distilgpt2": "distilbert/distilgpt2"}
LEGACY = re.compile(r"^/(?P<api>api/models/)?(?P<name>[^/]+)(?P<rest>/.*)?$")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size)
        if len(body) < size:  # the client was killed mid-request
            raise ConnectionResetError("the request body ended early")
        return body

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status=200, headers=None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _auth(self, required=True) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        ok = token is not None and (token == self.hub.token if self.hub.token else token.startswith("hf_"))
        if required and not ok:
            raise HubError(401, "Invalid credentials in Authorization header", None,
                           {"X-Error-Message": "Invalid credentials in Authorization header"})
        return ok

    def _dispatch(self):
        hub, parts = self.hub, urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        hub.requests.append((self.command, path))
        body = self._body() if self.command in ("POST", "PUT") else b""
        if hub.commit_delay and self.command == "POST" and "/commit/" in path:
            time.sleep(hub.commit_delay)  # outside the lock: other requests go on meanwhile
        try:
            with hub.lock:
                self._route(path, query, body)
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json({"error": e.message}, e.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # ------------------------------------------------------------------ routing
    def _route(self, path, query, body):
        hub, m = self.hub, None
        if path == "/api/whoami-v2" and self.command == "GET":
            self._auth()
            return self._json({"type": "user", "id": "0" * 24, "name": hub.user, "fullname": "Test User",
                               "email": None, "orgs": [], "isPro": False,
                               "auth": {"type": "access_token",
                                        "accessToken": {"displayName": "fake", "role": "write"}}})
        if path == "/api/repos/create" and self.command == "POST":
            self._auth()
            p = json.loads(body)
            repo_type = p.get("type") or "model"
            repo_id = f"{p.get('organization') or hub.user}/{p['name']}"
            if (repo_type, repo_id) in hub.repos:
                return self._json({"error": "You already created this repo",
                                   "url": hub.repo_url(hub.repos[(repo_type, repo_id)])}, 409)
            repo = hub.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, p.get("visibility") == "private")
            return self._json({"url": hub.repo_url(repo), "name": repo_id, "id": uuid.uuid4().hex[:24]})
        if path == "/api/validate-yaml" and self.command == "POST":
            return self._json({"errors": [], "warnings": []})
        if (m := LEGACY.match(path)) is not None and m["name"] in hub.legacy and (m["api"] or m["rest"]):
            target = f"/{m['api'] or ''}{hub.legacy[m['name']]}{m['rest'] or ''}"
            return self._send(307, b"", {"Location": target})
        if (m := API.match(path)) is not None:
            return self._api(TYPES[m["t"]], unquote(m["repo"]), m["rest"] or "", query, body)
        if (m := LFS_BATCH.match(path)) is not None and self.command == "POST":
            return self._lfs_batch(TYPES[m["t"]] if m["t"] else "model", m["repo"], body)
        if (m := LFS_OBJ.match(path)) is not None:
            return self._lfs_object(m["oid"], bool(m["verify"]), body)
        if (m := RESOLVE.match(path)) is not None and self.command in ("GET", "HEAD"):
            repo_type = TYPES[m["t"]] if m["t"] else "model"
            return self._resolve(hub.repo(repo_type, unquote(m["repo"])), m["rev"], unquote(m["path"]))
        raise HubError(404, f"Not found: {self.command} {path}")

    def _api(self, repo_type, repo_id, rest, query, body):
        hub = self.hub
        repo = hub.repo(repo_type, repo_id)
        if repo.private:
            if not self._auth(required=False):
                raise HubError(401, "Repository not found", "RepoNotFound")
        # --- repo_info / model_info
        if self.command == "GET" and (rest == "" or rest.startswith("/revision/")):
            sha = repo.resolve(rest[len("/revision/"):] if rest else "main")
            files = repo.commits[sha]["files"]
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = [{"rfilename": p, **({"size": f.size, "blobId": f.blob_oid} if blobs else {}),
                         **({"lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134}} if blobs and f.lfs
                            else {})} for p, f in sorted(files.items())]
            return self._json({"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": sha,
                               "private": repo.private, "disabled": False, "gated": False, "downloads": 0,
                               "likes": 0, "tags": [], "createdAt": repo.created,
                               "lastModified": repo.commits[sha]["date"], "siblings": siblings})
        # --- list_repo_tree
        if self.command == "GET" and (m := re.match(r"^/tree/([^/]+)(?:/(.*))?$", rest)):
            sha = repo.resolve(m[1])
            prefix = unquote(m[2] or "").strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            files = repo.commits[sha]["files"]
            out, dirs = [], set()
            for p, f in sorted(files.items()):
                if prefix and not p.startswith(prefix + "/"):
                    continue
                rel = p[len(prefix) + 1:] if prefix else p
                parts = rel.split("/")
                for i in range(1, len(parts) if recursive else min(2, len(parts))):
                    d = "/".join(filter(None, [prefix, *parts[:i]]))
                    if d not in dirs:
                        dirs.add(d)
                        out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                    "path": d})
                if recursive or len(parts) == 1:
                    out.append(f.tree_json(p))
            if prefix and not out:
                raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
            return self._json(out)
        # --- preupload
        if self.command == "POST" and (m := re.match(r"^/preupload/([^/]+)$", rest)):
            self._auth()
            files = repo.commits[repo.resolve(m[1])]["files"]
            answer = []
            for f in json.loads(body)["files"]:
                mode = hub.upload_mode(f["path"], f["size"], base64.b64decode(f.get("sample") or ""))
                existing = files.get(f["path"])
                oid = None if existing is None else (existing.sha256 if existing.lfs else existing.blob_oid)
                answer.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
            return self._json({"files": answer, "commitOid": repo.resolve(m[1])})
        # --- commit (ndjson)
        if self.command == "POST" and (m := re.match(r"^/commit/([^/]+)$", rest)):
            self._auth()
            return self._commit(repo, unquote(m[1]), body)
        # --- xet tokens (only in xet mode)
        if self.command == "GET" and (m := re.match(r"^/xet-(read|write)-token/([^/]+)$", rest)):
            if hub.lfs_mode != "xet":
                raise HubError(404, "Xet is not enabled on this fake hub")
            exp = int(time.time()) + 3600
            cas = f"local://{hub.xet_dir}"
            return self._json({"accessToken": "xet-fake", "exp": exp, "casUrl": cas},
                              headers={"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": "xet-fake",
                                       "X-Xet-Token-Expiration": exp})
        raise HubError(404, f"Not found: {self.command} {rest}")

    def _commit(self, repo: Repo, ref: str, body: bytes):
        hub = self.hub
        if hub.fail_commits > 0:
            hub.fail_commits -= 1
            raise HubError(hub.fail_status, "commit refused (a failure injected by the test)")
        if ref not in repo.refs:
            raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
        head = repo.refs[ref]
        files = dict(repo.commits[head]["files"])
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        for item in lines:
            key, v = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(v["content"])
                files[v["path"]] = FileEntry(data=data, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                                             lfs=False)
            elif key == "lfsFile":
                data = hub.lfs_objects.get(v["oid"])
                xet_hash = None
                if data is None:
                    xet_hash = _xet_hash_for_sha256(hub.xet_dir, v["oid"]) if hub.lfs_mode == "xet" else None
                    if xet_hash is None:
                        raise HubError(422, f"LFS object {v['oid']} was not uploaded")
                files[v["path"]] = FileEntry(data=data, size=v.get("size") or len(data), sha256=v["oid"], lfs=True,
                                             xet_hash=xet_hash)
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                for p in [p for p in files if p.startswith(prefix)]:
                    del files[p]
        oid = repo.add_commit(ref, files, header.get("summary", ""), head)
        return self._json({"success": True, "commitOid": oid, "commitUrl": f"{hub.repo_url(repo)}/commit/{oid}",
                           "hookOutput": "", "pullRequestUrl": None})

    def _lfs_batch(self, repo_type, repo_id, body):
        self._auth()
        self.hub.repo(repo_type, unquote(repo_id))
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self.hub.lfs_objects:  # no "actions" => already uploaded
                href = f"{self.hub.url}/__lfs/{o['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}},
                                    "verify": {"href": f"{href}/verify", "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   ctype="application/vnd.git-lfs+json")

    def _lfs_object(self, oid, verify, body):
        hub = self.hub
        if verify and self.command == "POST":
            if oid not in hub.lfs_objects:
                raise HubError(404, "LFS object not found")
            return self._json({"success": True})
        if self.command == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                raise HubError(400, "sha256 mismatch")
            hub.lfs_objects[oid] = body
            return self._send(200, b"", {"ETag": f'"{oid}"'})
        raise HubError(405, "Method not allowed")

    def _resolve(self, repo: Repo, revision: str, path: str):
        if repo.private and not self._auth(required=False):
            raise HubError(401, "Repository not found", "RepoNotFound")
        sha = repo.resolve(revision)
        f = repo.commits[sha]["files"].get(path)
        if f is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.blob_oid}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": f.size})
        if f.xet_hash and f.data is None:  # content only lives in the local CAS -> client downloads with hf_xet
            headers.update({"X-Xet-Hash": f.xet_hash,
                            "Link": f'<{self.hub.url}/api/{repo.type}s/{repo.id}/xet-read-token/{sha}>; rel="xet-auth"'})
            return self._send(200, b"", headers, "application/octet-stream") if self.command == "HEAD" else \
                self._send(400, b"content is in xet storage")
        data = f.data
        if (rng := re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))) and self.command == "GET":
            start, end = int(rng[1]), int(rng[2]) if rng[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        if self.command == "HEAD":
            self.send_response(200)
            for k, v in {**headers, "Content-Length": len(data), "Content-Type": "application/octet-stream"}.items():
                self.send_header(k, str(v))
            return self.end_headers()
        return self._send(200, data, headers, "application/octet-stream")


def client_env(hub: FakeHub, env: dict, home, token: str, path: str = "xet") -> dict:
    """`env` for a huggingface_hub client of this hub: online, its own HF_HOME, the token; proxies
    point at a closed local port (loopback excepted), so a request meant for anywhere but
    127.0.0.1 fails instead of leaving the machine. path='lfs' takes classic LFS instead of xet."""
    env = dict(env)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env[key] = "0"
    env.update({
        "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_TOKEN": token, "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        **{k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")},
    })
    if path == "lfs":
        env["HF_HUB_DISABLE_XET"] = "1"
    return env


def _xet_hash_for_sha256(xet_dir: str | None, sha256: str) -> str | None:
    """Find the Xet file hash of a file uploaded by hf_xet to the local:// CAS, given its sha256.

    Parses the MDB shards written by hf_xet's LocalClient (<xet_dir>/xet/xorbs/shards/*.mdb): 48-byte header,
    then per file a 48-byte FileDataSequenceHeader (hash, flags, n) + n segment entries (+ n verification
    entries if flag bit31) (+ 1 metadata-ext entry holding the sha256 if flag bit30); bookend = 0xFF*32.
    Hashes are 4 little-endian u64 words, printed as 4 big-endian 16-hex-digit groups.
    """
    import glob
    import os
    import struct

    def hexify(raw: bytes) -> str:
        return "".join(raw[i:i + 8][::-1].hex() for i in range(0, 32, 8))

    for shard in glob.glob(os.path.join(xet_dir or "", "xet", "xorbs", "shards", "*.mdb")):
        b, off = open(shard, "rb").read(), 48
        while off + 48 <= len(b) and b[off:off + 32] != b"\xff" * 32:
            file_hash, (flags, n) = b[off:off + 32], struct.unpack("<II", b[off + 32:off + 40])
            off += 48 + 48 * (n * 2 if flags & (1 << 31) else n)
            if flags & (1 << 30):
                if hexify(b[off:off + 32]) == sha256:
                    return hexify(file_hash)
                off += 48
    return None


if __name__ == "__main__":
    import sys

    hub = FakeHub(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8765).start()
    print(hub.url, flush=True)
    threading.Event().wait()
