"""Names of things on the Hugging Face Hub: repo ids, revisions, legacy aliases, URLs to show.

    is_hub_id("user/name@v1")        # True (unless a local path has that name)
    split_revision("user/name@v1")   # ("user/name", "v1")
    hub_repo("gpt2")                 # "openai-community/gpt2": GPT-2's current name on the Hub
    shown_url("https://u:p@host/a.txt?token=x")   # "https://host/a.txt": no secrets in logs or files
"""

import re
import urllib.parse
from pathlib import Path

# user/name, or a legacy id without a namespace (gpt2, wikitext), then @revision (branch, tag, commit)
HUB_ID = re.compile(r"(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?")
# Legacy ids that the Hub now serves under an organisation.
ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}


def is_hub_id(name: str | None, namespace: bool = True) -> bool:
    """Whether `name` reads as a Hub repo id (user/name[@revision]; with namespace=False a bare
    legacy name counts too) and is not a local path."""
    if not name or not HUB_ID.fullmatch(name) or Path(name).exists():
        return False
    return "/" in name.split("@")[0] or not namespace


def split_revision(name: str) -> tuple[str, str | None]:
    """'user/name@revision' -> ('user/name', 'revision'); a local path or a name without @ has none."""
    repo, at, revision = name.rpartition("@")
    if not at or not repo or Path(name).exists():
        return name, None
    return repo, revision


def hub_repo(name: str) -> str:
    """The repo id the Hub serves `name` under (legacy GPT-2 names moved to openai-community/)."""
    return ALIASES.get(name, name)


def is_url(entry: str) -> bool:
    return urllib.parse.urlsplit(entry).scheme in ("http", "https")


def shown_url(url: str) -> str:
    """The URL without user:password@ and without its query string and fragment, where presigned
    URLs keep their signatures and tokens: safe to print, log and save."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
