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
    """The first line of an exception, for a one-line error message (token removed)."""
    return redact(first_line(e))
