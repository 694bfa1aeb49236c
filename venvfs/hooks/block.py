"""The marked block a hook is in an activation script: finding it, removing it, and appending one."""

from __future__ import annotations

from venvfs.hooks.target import BEGIN, END


def insert_append(text: str, block: str) -> str | None:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "\n" + block


def _block_span(text: str) -> tuple[int, int] | None:
    """Start and end offsets of the hook block, with its leading indentation and the blank line
    ``install`` put before it; None when absent."""
    begin = text.find(BEGIN)
    if begin < 0:
        return None
    end = text.find(END, begin)
    if end < 0:
        return None
    end += len(END)
    if text.startswith("\n", end):
        end += 1
    begin = text.rfind("\n", 0, begin) + 1  # start of the marker's line (indentation included)
    # The separating blank line that _insert_append adds, unless it is the very start of the file.
    if begin >= 2 and text[begin - 2: begin] == "\n\n":
        begin -= 1
    return begin, end


def strip_block(text: str) -> str:
    span = _block_span(text)
    if span is None:
        return text
    return text[: span[0]] + text[span[1]:]


def current_block(text: str) -> str | None:
    span = _block_span(text)
    if span is None:
        return None
    return text[span[0]: span[1]].lstrip("\n")
