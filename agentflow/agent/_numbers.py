"""Checking the numbers of an agent's answer against what its tools returned.

Small models misquote what they read (a 0.956 % drop rate reported as 92.2 %). Before an
answer is accepted, every measured-looking number in it (one with a decimal point, or followed
by a unit such as %, dB, dBm, ms) must appear in the run's evidence: the task, the arguments of
its tool calls and the results of the calls that ran, as written or rounded to the precision the
answer shows (0.956 may be quoted as 0.96 or 1.0). Counts, ids and times (CS-101, 02:00, 3
sites) are not checked. The agent sends a mismatch back once; a second answer is accepted with
the numbers it could not verify listed in the outcome (`unverified_numbers`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["unverified_numbers"]

# A number not glued to a word or an id (CS-101, v2, 5G) and not part of a time or date.
_NUMBER = re.compile(
    r"(?<![\w.:/-])([-+]?\d+(?:[.,]\d+)?)(?![\w:/-]|\.\d)(\s*(?:%|percent\b|dBm\b|dB\b|ms\b|s\b|Mbps\b|Gbps\b|MHz\b))?",
    re.I,
)
_ANY_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _claims(answer: str) -> list[tuple[str, Decimal]]:
    """The measured-looking numbers of an answer: (as written, value)."""
    found = []
    for match in _NUMBER.finditer(answer):
        digits, unit = match.group(1), match.group(2)
        if re.fullmatch(r"[-+]?\d{1,3},\d{3}", digits):
            digits = digits.replace(",", "")  # 1,000: a thousands separator, not a decimal comma
        if "." not in digits and "," not in digits and not unit:
            continue  # a count, an id or a step number
        try:
            value = Decimal(digits.replace(",", "."))
        except InvalidOperation:
            continue
        found.append((match.group(0).strip(), value))
    return found


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def _evidence_numbers(texts: Iterable[str]) -> set[Decimal]:
    out: set[Decimal] = set()
    for text in texts:
        try:
            parsed: Any = json.loads(text)
        except ValueError:
            parsed = None
        leaves = [*_leaves(parsed)] if parsed is not None else []
        for leaf in [*leaves, text]:
            if isinstance(leaf, bool):
                continue
            if isinstance(leaf, int | float):
                try:
                    out.add(Decimal(str(leaf)))
                except InvalidOperation:
                    continue
            elif isinstance(leaf, str):
                for raw in _ANY_NUMBER.findall(leaf):
                    try:
                        out.add(Decimal(raw))
                    except InvalidOperation:
                        continue
    return out


def _matches(claim: Decimal, known: set[Decimal]) -> bool:
    """The claim is a known number as written or rounded to the claim's precision. (Not scaled:
    a 0.956 % drop rate quoted as 95.6 % is the misquote this check is for.)"""
    exponent = claim.as_tuple().exponent
    places = Decimal(1).scaleb(exponent if isinstance(exponent, int) else 0)
    for k in known:
        if k == claim:
            return True
        try:
            if k.quantize(places) == claim:
                return True
        except InvalidOperation:
            continue
    return False


def unverified_numbers(answer: str, evidence: Iterable[str]) -> list[str]:
    """The numbers of `answer` (as written) found nowhere in `evidence` (tool results, call
    arguments, the task), in the answer's order."""
    claims = _claims(answer)
    if not claims:
        return []
    known = _evidence_numbers(evidence)
    return [written for written, value in claims if not _matches(abs(value), {abs(k) for k in known})]
