"""Engine profiles: the hardware and model numbers behind the simulated replica's timing.

A profile is data (a frozen dataclass, loadable from JSON), not code. The default,
``l4-llama3.1-8b``, is the derived calibration of ``reference/calibration.md`` §4.3: Llama-3.1-8B
BF16 on one NVIDIA L4 under SGLang.

* Decode is memory-bound: one step reads the weights once plus the KV cache of every running
  request, so ``step_ms = fixed + (weights + Σcontext · kv_bytes) / (η · bandwidth)``.
* Prefill is compute-bound and only pays for tokens the prefix cache does not hold:
  ``prefill_ms = overhead + uncached · ms_per_token`` (512 tokens ≈ 300 ms, the paper's figure).
* A decode batch larger than ``cuda_graph_max_bs`` runs without CUDA graphs and pays
  ``eager_decode_overhead_ms`` more per step.

The scheduler constants (``init_new_token_ratio`` and friends) are SGLang 0.4.5's defaults;
each field says where it comes from.

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
    #: The model's context length (SGLang's ``context_len``, from the model config). The longest
    #: prompt accepted is also bound by the KV pool: see :meth:`max_req_input_len`.
    max_context_tokens: int
    #: SGLang's ``init_new_token_ratio``: admission counts every running request's remaining
    #: output at this fraction right after start, a retraction-free idle period, or a reset.
    #: 0.4.5 ``global_config.py``: ``default_init_new_token_ratio = 0.7``
    #: (``SGLANG_INIT_NEW_TOKEN_RATIO``), times ``schedule_conservativeness`` (default 1.0) in
    #: ``Scheduler.__init__``.
    init_new_token_ratio: float = 0.7
    #: The floor is ``init_new_token_ratio × min_new_token_ratio_factor``
    #: (``global_config.default_min_new_token_ratio_factor = 0.14``; ``Scheduler.__init__``).
    min_new_token_ratio_factor: float = 0.14
    #: The ratio falls from init to the floor in this many decode steps
    #: (``global_config.default_new_token_ratio_decay_steps = 600``; ``Scheduler.__init__`` sets
    #: ``new_token_ratio_decay = (init - min) / steps``).
    new_token_ratio_decay_steps: float = 600.0
    #: Admission counts at most this many of a request's ``max_new_tokens``
    #: (``schedule_policy.py``: ``CLIP_MAX_NEW_TOKENS_ESTIMATION = 4096``).
    clip_max_new_tokens: int = 4096
    #: After a retraction, the remaining requests must have room for this many decode steps each
    #: (``global_config.retract_decode_steps = 20``; ``ScheduleBatch.retract_decode``).
    retract_decode_steps: int = 20
    #: At most this many new prompt tokens in one prefill batch (``--max-prefill-tokens``,
    #: ``server_args.py`` default 16384); the chunk size is usually the tighter bound.
    max_prefill_tokens: int = 16384
    #: ``sglang:*`` gauges are refreshed every this many decode steps (``--decode-log-interval``,
    #: ``server_args.py`` default 40; ``Scheduler.process_batch_result_decode``).
    decode_log_interval: int = 40
    #: While idle the gauges are refreshed when this long has passed since the last refresh, in
    #: model seconds (``Scheduler.check_memory``: "During idle time, also collect metrics every
    #: 30 seconds").
    idle_log_interval_s: float = 30.0
    #: Decode batches up to this size replay a captured CUDA graph; larger ones run eagerly
    #: (``server_args.py`` ``__post_init__``: ``cuda_graph_max_bs = 8`` when the GPU has under
    #: 25 GB and ``tp_size < 4``; an L4 has 24 GB).
    cuda_graph_max_bs: int = 8
    #: Extra cost of one eager decode step (a batch above ``cuda_graph_max_bs``), ms. No published
    #: L4 number: derived as ~500 kernel launches per Llama-3.1-8B forward (32 layers × ~15
    #: kernels + sampling) × ~10 µs of PyTorch eager dispatch each, which a CUDA graph replay
    #: removes. An estimate; re-fit from a real L4 run.
    eager_decode_overhead_ms: float = 5.0
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
            "init_new_token_ratio",
            "new_token_ratio_decay_steps",
            "clip_max_new_tokens",
            "retract_decode_steps",
            "max_prefill_tokens",
            "decode_log_interval",
            "idle_log_interval_s",
        ):
            value = getattr(self, positive)
            if isinstance(value, (int, float)) and value <= 0:
                problems.append(f"{positive}={value!r} must be > 0")
        if isinstance(self.init_new_token_ratio, (int, float)) and self.init_new_token_ratio > 1:
            problems.append(f"init_new_token_ratio={self.init_new_token_ratio!r} must be <= 1")
        if problems:
            raise ValueError(f"invalid engine profile {self.name!r}: " + "; ".join(problems))

    def decode_step_ms(self, context_tokens: int, batch_size: int = 1) -> float:
        """Model time of one decode step of ``batch_size`` requests holding ``context_tokens`` in
        total, ms. A batch above ``cuda_graph_max_bs`` runs eagerly and pays
        ``eager_decode_overhead_ms`` more (SGLang 0.4.5 ``CudaGraphRunner.can_run``: a batch
        larger than the biggest captured size falls back to ``forward_decode`` without a graph).
        """
        bytes_read = self.weights_bytes + context_tokens * self.kv_bytes_per_token
        eager = self.eager_decode_overhead_ms if batch_size > self.cuda_graph_max_bs else 0.0
        return (
            self.decode_fixed_ms
            + eager
            + bytes_read / (self.bandwidth_efficiency * self.mem_bandwidth_bytes_per_s) * 1000.0
        )

    @property
    def min_new_token_ratio(self) -> float:
        """SGLang's ``min_new_token_ratio = min(init × factor, 1.0)`` (``Scheduler.__init__``)."""
        return min(self.init_new_token_ratio * self.min_new_token_ratio_factor, 1.0)

    @property
    def new_token_ratio_decay(self) -> float:
        """Per decode step: ``(init - min) / decay_steps`` (``Scheduler.__init__``)."""
        return (self.init_new_token_ratio - self.min_new_token_ratio) / self.new_token_ratio_decay_steps

    @property
    def max_req_len(self) -> int:
        """``min(context_len - 1, max_total_num_tokens - 1)`` (0.4.5 ``Scheduler.__init__``)."""
        return min(self.max_context_tokens - 1, self.kv_capacity_tokens - 1)

    @property
    def max_req_input_len(self) -> int:
        """``max_req_len - 5`` (``Scheduler.__init__``); a prompt of this many tokens or more is
        refused (``managers/utils.py`` ``validate_input_length``)."""
        return self.max_req_len - 5

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
        # calibration.md §4.3: t_fix ≈ 2–5 ms per decode step (launches, sampling).
        decode_fixed_ms=3.0,
        weights_bytes=16.06e9,  # 8.03 B params × 2 bytes (BF16); Llama-3.1-8B model card
        kv_bytes_per_token=131072,  # 2 × 32 layers × 8 KV heads × 128 dims × 2 bytes (config.json)
        mem_bandwidth_bytes_per_s=300e9,  # L4 GDDR6, 300 GB/s (NVIDIA L4 spec sheet)
        # calibration.md §4.3: η ≈ 0.75–0.85, from an A100 measurement at ~77 % of the roofline.
        bandwidth_efficiency=0.8,
        # calibration.md §4.3: 20–30 ms fixed per prefill iteration; llm-d-inference-sim 25–40 ms.
        prefill_overhead_ms=25.0,
        # SkyWalker paper §2.1 (fidelity.md §1): prefilling a 512-token prompt takes ~300 ms on an
        # L4, so (300 - 25) / 512 = 0.537 ms/token (≈ 30 TFLOPS effective = 25 % of the L4's
        # 121 TFLOPS dense BF16 at 16.06 GFLOP/token).
        prefill_ms_per_token=0.537,
        # calibration.md §4.3: (0.8 × ~22.5 GiB − 14.96 GiB) / 128 KiB ≈ 20–25k tokens; SGLang's
        # mem_fraction_static is 0.88 for tp 1 (server_args.py __post_init__).
        kv_capacity_tokens=22000,
        # server_args.py __post_init__: chunked_prefill_size = 2048 when the GPU has < 25 GB.
        chunked_prefill_tokens=2048,
        # Scheduler.__init__: max_running_requests = min(max_total_num_tokens // 2,
        # req_to_token_pool.size); the pool holds min(max(total / context_len × 512, 2048), 4096)
        # = 2048 requests (ModelRunner.init_memory_pool), so 2048. The KV rule binds long before.
        max_running_requests=2048,
        # Llama-3.1 config.json: max_position_embeddings = 131072 (SGLang's context_len).
        max_context_tokens=131072,
        # Natural answer length when the client sets no max_tokens stop: median 180, sigma 0.9.
        # No source found: a project choice (unchanged), not an SGLang or paper number.
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
