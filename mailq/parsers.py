"""The API's JSON parser: DRF's, plus a 400 for JSON we could parse but never store or answer.

Python's json module accepts documents that fail later, as a 500: nesting past the recursion
limit (RecursionError while parsing, or later while encoding for the jsonb column), numbers
beyond a double (`1e400` parses to inf, which jsonb refuses), and lone UTF-16 surrogates
(`"\\ud800"`, which neither jsonb nor the UTF-8 response encoder can carry). I-JSON (RFC 7493)
forbids the last two anyway, so they are malformed input, refused before any view sees them.
"""

import codecs
import json
import math
import re
from typing import Any

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

# Template data is a few levels deep; this bound keeps every later json.dumps (and PostgreSQL's
# jsonb parser) far from its recursion limit.
MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _check(document: Any) -> None:
    """Refuse over-deep nesting and lone surrogates; iterative, as the document may be deep."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise ParseError("JSON parse error - lone surrogate in a string")
        elif isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise ParseError(f"JSON parse error - nested deeper than {MAX_DEPTH} levels")
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            document = json.load(
                codecs.getreader(encoding)(stream),
                parse_constant=_refuse_constant,
                parse_float=_finite,
            )
        except (ValueError, RecursionError) as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        _check(document)
        return document
