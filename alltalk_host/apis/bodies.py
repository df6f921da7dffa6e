"""Request bodies as every front reads them, whatever its web framework: a JSON object, and the
words a refusal quotes of a parser's complaint. The aiohttp front reads the bytes (its size
limit, content codings and forms) in ``web/bodies.py``; the Ray front in ``ray/front.py``.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import BadRequest, Code


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; an empty body counts as ``{}``."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    # ValueError covers a JSONDecodeError, bytes that are no UTF-8 and a number of thousands
    # of digits (Python's int limit); RecursionError, arrays nested thousands deep.
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {short(exc)}",
                         code=Code.MALFORMED_JSON) from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code=Code.MALFORMED_JSON)
    return data


def short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__
