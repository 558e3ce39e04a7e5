"""Word error rate: how many words a transcript got wrong against the known text."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower-case words of ``text``, punctuation dropped ("Friday." and "friday" are one word).

    Apostrophes and hyphens inside a word are kept ("it's", "high-plines").
    """
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions that turn ``reference``'s words into ``hypothesis``'s.

    The Levenshtein distance over words, by dynamic programming one reference word at a time.
    """
    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(
                min(
                    previous[j] + 1,  # reference word deleted
                    current[j - 1] + 1,  # hypothesis word inserted
                    previous[j - 1] + (ref_word != hyp_word),  # kept or substituted
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors per reference word (0.0 is every word right; can exceed 1.0 with insertions)."""
    return word_errors(reference, hypothesis) / max(1, len(words(reference)))
