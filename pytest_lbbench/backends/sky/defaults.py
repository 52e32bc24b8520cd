"""The sky backend's defaults, apart from the code that uses them, so that declaring the
``--sky-*`` options (every pytest start) imports nothing else of the backend."""

from __future__ import annotations

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DEFAULT_CLOUD = "aws"
DEFAULT_ACCELERATOR = "L4:1"
DEFAULT_SGLANG_VERSION = "0.4.5"  # the original llm.yaml (§4.1)
#: SkyPilot requests in flight at once (a local API server runs 4 long requests at a time).
DEFAULT_MAX_PARALLEL = 4
