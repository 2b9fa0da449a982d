"""The proxy's JSON responses, encoded by msgspec.

Starlette's JSONResponse runs `json.dumps`, which is the largest single cost of a
passthrough after the sockets (~4% of the proxy's CPU per request in
`python -m bench.profile`). msgspec writes the same compact UTF-8 JSON several
times faster. One difference: a NaN or infinite float becomes `null` (Starlette
would raise); the proxy never builds one, and upstream replies are validated first.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import JSONResponse

_encode = msgspec.json.Encoder().encode


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _encode(content)
