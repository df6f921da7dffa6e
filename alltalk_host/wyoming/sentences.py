"""Text that arrives in pieces (a language model writing), cut into sentences as they complete."""

from __future__ import annotations

from ..text import split_sentences


class SentenceBuffer:
    """Complete sentences out of text pieces, with the host's one splitter.

    The last sentence the splitter finds is held back until more text (or the end) comes: a
    sentence is only known to be over once the next one has begun ("Dr." is no sentence end,
    "Wait... what?" is one sentence), and a piece may end in the middle of a word.
    """

    def __init__(self) -> None:
        self._tail = ""

    def add(self, text: str) -> list[str]:
        """The sentences that ``text`` completes."""
        self._tail += text
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
