"""Engine profiles: the hardware and model numbers behind the simulated replica's timing.

A profile is data (a frozen dataclass, loadable from JSON), not code. The default,
``l4-llama3.1-8b``, is the derived calibration of ``reference/calibration.md`` §4.3: Llama-3.1-8B
BF16 on one NVIDIA L4 under SGLang.

* Decode is memory-bound: one step reads the weights once plus the KV cache of every running
  request, so ``step_ms = fixed + (weights + Σcontext · kv_bytes) / (η · bandwidth)``.
* Prefill is compute-bound and only pays for tokens the prefix cache does not hold:
  ``prefill_ms = overhead + uncached · ms_per_token``.

Every duration the engine waits for is multiplied by ``time_scale`` (1.0 = real time), so tests
can run the same model ten or a hundred times faster.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

DEFAULT_PROFILE = "l4-llama3.1-8b"


@dataclass(frozen=True)
class EngineProfile:
    """Timing, memory and scheduler limits of one simulated inference engine."""

    name: str
    #: Per-step cost that does not scale with bytes read (kernel launches, sampling), ms.
    decode_fixed_ms: float
    #: Bytes of model weights read by every decode step.
    weights_bytes: float
    #: KV-cache bytes per token (2 · layers · kv_heads · head_dim · dtype bytes).
    kv_bytes_per_token: float
    #: Peak memory bandwidth of the accelerator, bytes/s.
    mem_bandwidth_bytes_per_s: float
    #: Fraction of the peak bandwidth a decode step achieves.
    bandwidth_efficiency: float
    #: Fixed cost of one prefill iteration, ms.
    prefill_overhead_ms: float
    #: Cost of each uncached prompt token in a prefill iteration, ms.
    prefill_ms_per_token: float
    #: KV-cache pool size in tokens (SGLang's ``max_total_num_tokens``).
    kv_capacity_tokens: int
    #: At most this many new prompt tokens per prefill iteration (``--chunked-prefill-size``).
    chunked_prefill_tokens: int
    #: At most this many requests admitted at once (``--max-running-requests``).
    max_running_requests: int
    #: Longest prompt accepted; longer prompts get HTTP 400 (the model's context length).
    max_context_tokens: int
    #: Admission reserves this fraction of a request's remaining ``max_new_tokens`` in KV memory
    #: (SGLang's ``new_token_ratio``), so admitted requests rarely run out of room mid-decode.
    new_token_reserve_ratio: float = 0.4
    #: Median natural answer length, tokens (lognormal; capped by ``max_tokens``).
    output_median_tokens: float = 180.0
    #: Sigma of the log of the answer length.
    output_sigma: float = 0.9
    #: Multiplies every engine duration; 1.0 = real time, 0.1 = ten times faster.
    time_scale: float = 1.0
    #: Free text: where the numbers come from.
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("name", "description"):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                problems.append(f"{field.name}={value!r} is not a finite number")
            elif value < 0:
                problems.append(f"{field.name}={value!r} is negative")
        for positive in (
            "mem_bandwidth_bytes_per_s",
            "bandwidth_efficiency",
            "kv_capacity_tokens",
            "chunked_prefill_tokens",
            "max_running_requests",
            "max_context_tokens",
            "output_median_tokens",
            "time_scale",
        ):
            value = getattr(self, positive)
            if isinstance(value, (int, float)) and value <= 0:
                problems.append(f"{positive}={value!r} must be > 0")
        if problems:
            raise ValueError(f"invalid engine profile {self.name!r}: " + "; ".join(problems))

    def decode_step_ms(self, context_tokens: int) -> float:
        """Model time of one decode step whose batch holds ``context_tokens`` in total, ms."""
        bytes_read = self.weights_bytes + context_tokens * self.kv_bytes_per_token
        return (
            self.decode_fixed_ms
            + bytes_read / (self.bandwidth_efficiency * self.mem_bandwidth_bytes_per_s) * 1000.0
        )

    def prefill_ms(self, uncached_tokens: int) -> float:
        """Model time of one prefill iteration computing ``uncached_tokens`` new tokens, ms."""
        return self.prefill_overhead_ms + uncached_tokens * self.prefill_ms_per_token

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EngineProfile:
        """A copy with some fields changed (validated like any profile)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: EngineProfile | None = None) -> EngineProfile:
        """Build a profile from a mapping; missing fields come from ``base`` (if given).

        Unknown keys raise ``ValueError`` naming them and listing the valid ones, so a typo in a
        JSON profile never silently falls back to a default.
        """
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown engine profile field(s) {unknown}; valid fields: {sorted(valid)}")
        if base is not None:
            return dataclasses.replace(base, **dict(data))
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise ValueError(
                f"engine profile is missing field(s) {missing}; give them, or name a registered "
                f'profile to start from with "base" (one of {sorted(PROFILES)})'
            )
        return cls(**dict(data))


PROFILES: dict[str, EngineProfile] = {
    DEFAULT_PROFILE: EngineProfile(
        name=DEFAULT_PROFILE,
        decode_fixed_ms=3.0,
        weights_bytes=16.06e9,  # 8.03 B params × 2 bytes (BF16)
        kv_bytes_per_token=131072,  # 2 × 32 layers × 8 KV heads × 128 dims × 2 bytes
        mem_bandwidth_bytes_per_s=300e9,  # L4 GDDR6
        bandwidth_efficiency=0.8,
        prefill_overhead_ms=25.0,
        prefill_ms_per_token=0.23,
        kv_capacity_tokens=22000,
        chunked_prefill_tokens=2048,
        max_running_requests=128,
        max_context_tokens=8192,
        new_token_reserve_ratio=0.4,
        output_median_tokens=180.0,
        output_sigma=0.9,
        description=(
            "Llama-3.1-8B-Instruct BF16 on 1x NVIDIA L4 under SGLang 0.4.5; derived from spec "
            "sheets in reference/calibration.md section 4.3, not measured"
        ),
    ),
}


def load_profile(name_or_path: str | Path, **overrides: Any) -> EngineProfile:
    """A registered profile by name, or one read from a JSON file, with ``overrides`` applied.

    A JSON profile is an object of :class:`EngineProfile` fields. It may hold ``"base": "<name>"``
    to start from a registered profile and change only some fields.
    """
    key = str(name_or_path)
    if key in PROFILES:
        profile = PROFILES[key]
    else:
        path = Path(key)
        if not path.is_file():
            raise ValueError(
                f"unknown engine profile {key!r}: not a registered profile ({', '.join(sorted(PROFILES))}) "
                "and not a JSON file"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read engine profile {str(path)!r}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(
                f"engine profile {str(path)!r} must hold a JSON object, not {type(data).__name__}"
            )
        base_name = data.pop("base", None)
        base = None
        if base_name is not None:
            if base_name not in PROFILES:
                raise ValueError(
                    f"engine profile {str(path)!r}: unknown base {base_name!r}; valid: {sorted(PROFILES)}"
                )
            base = PROFILES[base_name]
        data.setdefault("name", path.stem)
        profile = EngineProfile.from_dict(data, base=base)
    return profile.replace(**overrides) if overrides else profile
