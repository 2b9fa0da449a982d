"""litellm, imported once at startup with its offline switches set first.

`import litellm` can otherwise block on the network (cost map, catalogs) and
takes seconds: it must never happen lazily inside a request.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_DISABLE_LATEST_RELEASE_CHECK": "true",
    "LITELLM_LOG": "ERROR",
}


@lru_cache(maxsize=1)
def litellm() -> Any:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import litellm as _litellm

    _litellm.telemetry = False
    _litellm.suppress_debug_info = True
    _litellm.drop_params = False  # an unsupported `n` must surface so we can fan out instead
    return _litellm
