"""How large a request body may be (FastAPI's ``max_body_size``: 413 beyond it).

Bodies are read whole (and parsed) unless a route streams them, so this bounds the memory
one request can take. Routes that stream their body set ``STREAMED``: the recipient
append keeps memory bounded whatever the size, and callbacks cut a body off at 8 MB
themselves (answered in their provider's shape, DESIGN §6).
"""

from __future__ import annotations

import sys

MAX_API_BODY_BYTES = 64 * 1024 * 1024
STREAMED = sys.maxsize
