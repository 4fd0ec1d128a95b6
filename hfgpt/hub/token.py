"""The Hub token is never printed or written: messages about Hub calls go through `reason`.

    raise UserError(f"could not create the repo ({reason(e)}): ...")
"""

from hfgpt.core.errors import first_line


def redact(text: str) -> str:
    """`text` with the Hub token, if any, replaced by ***."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def reason(e: BaseException) -> str:
    """The first line of an exception, for a one-line error message (token removed); for an HTTP
    answer, with its status and the server's own message."""
    text = first_line(e)
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        said = (getattr(e, "server_message", None) or "").strip().splitlines()
        text = f"HTTP {status}: {text.rstrip(': ')}" + (f": {said[0]}" if said and said[0] not in text else "")
    return redact(text)
