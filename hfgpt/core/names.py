"""Names of things on the Hugging Face Hub: repo ids, revisions, legacy aliases, URLs to show.

    is_hub_id("user/name@v1")        # True (unless a local path has that name)
    split_revision("user/name@v1")   # ("user/name", "v1")
    hub_repo("gpt2")                 # "openai-community/gpt2": GPT-2's current name on the Hub
    shown_url("https://u:p@host/a.txt?token=x")   # "https://host/a.txt": no secrets in logs or files
    shown_text("could not load https://u:p@host/m")  # every URL in a text through shown_url
    shown_command(["train", "--hub_token=hf_x", "--source=https://u:p@h/a?s=1"])  # 'train --hub_token=*** --source=https://h/a'
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
    if not at or not repo or is_url(name) or Path(name).exists():  # a URL's @ is its user:password's
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


URL_IN_TEXT = re.compile(r"https?://\S+", re.IGNORECASE)
# an option whose value is a secret by its name (--hub_token=..., --password ...), and Hub tokens anywhere
SECRET_OPTION = re.compile(r"^--?[\w-]*(token|password|passwd|secret|api[_-]?key|auth|credential)[\w-]*$", re.IGNORECASE)
HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


def _shown_match(found: re.Match) -> str:
    url = found[0].rstrip("'\",;)]}")  # the quote, comma or bracket around a URL in a message stays
    try:
        return shown_url(url) + found[0][len(url):]
    except ValueError:  # not parseable as a URL (an unclosed [ in its host): show none of it
        return url.split("://")[0] + "://***" + found[0][len(url):]


def shown_text(text: str) -> str:
    """`text` with every http(s) URL in it through shown_url and Hub tokens as ***: for messages that
    quote what the user gave (init_from, tokenizer, resume_from, a model, a command line)."""
    return HUB_TOKEN.sub("***", URL_IN_TEXT.sub(_shown_match, text))


def shown_command(argv: list[str]) -> str:
    """A command line as it may be saved and shown: the value of an option named like a secret
    (--hub_token=..., --password ...) as ***, every URL through shown_url, Hub tokens as ***."""
    shown, hide_next = [], False
    for arg in argv:
        key, eq, _ = arg.partition("=")
        if hide_next and not arg.startswith("-"):
            shown.append("***")
        elif SECRET_OPTION.match(key):
            shown.append(f"{key}=***" if eq else key)
        else:
            shown.append(shown_text(arg))
        hide_next = not eq and bool(SECRET_OPTION.match(key))
    return " ".join(shown)
