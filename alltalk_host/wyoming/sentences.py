"""Text that arrives in pieces (a language model writing), cut into sentences as they complete."""

from __future__ import annotations

from ..errors import BadRequest, Code
from ..text import split_sentences


class SentenceBuffer:
    """Complete sentences out of text pieces, with the host's one splitter.

    The last sentence the splitter finds is held back until more text (or the end) comes: a
    sentence is only known to be over once the next one has begun ("Dr." is no sentence end,
    "Wait... what?" is one sentence), and a piece may end in the middle of a word.

    At most ``limit`` characters in all (the config's ``max_text_length``): a piece that would
    pass it is refused before any splitting, so no peer makes the splitter (which runs on the
    event loop) read more than one request's worth of text.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._tail = ""
        self._limit = limit
        self._length = 0

    def add(self, text: str) -> list[str]:
        """The sentences that ``text`` completes; BadRequest (``text_too_long``) if it would
        pass the limit, and then the text so far is unchanged."""
        if self._limit is not None and self._length + len(text) > self._limit:
            raise BadRequest(f"the streamed text passed {self._limit} characters, the limit",
                             code=Code.TEXT_TOO_LONG,
                             details={"length": self._length + len(text), "limit": self._limit})
        self._length += len(text)
        self._tail += text
        if text.isspace():
            # Completes nothing, and the tail (otherwise one sentence, cut at 400 characters)
            # could grow with it to the limit, to be split again at every piece.
            return []
        sentences = split_sentences(self._tail)
        if len(sentences) < 2:
            return []
        # Keep the raw text of the last sentence, spaces included: the next piece may go on
        # with the same word.
        self._tail = self._tail[self._tail.rindex(sentences[-1]):]
        return sentences[:-1]

    def finish(self) -> list[str]:
        """What is left, at the end of the text."""
        sentences, self._tail = split_sentences(self._tail), ""
        return sentences
