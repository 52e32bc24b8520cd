"""Where a request's TTFT goes: its parts, from the timestamps the client, every LB hop and the
replica take, and the emulated delays of the links between them. No pytest here.

Everything runs on one machine and stamps ``time.time()``, so the parts telescope: for every
request they add up to its TTFT (to float rounding). A request's path is cut into segments at
each timestamp:

* ``to_entry`` (client → the entry LB's arrival stamp), ``lb_to_lb`` (the pushing LB's
  schedule stamp → the peer LB's arrival stamp), ``to_replica`` (the last LB's schedule stamp,
  or the client's send when the balancer stamps nothing, e.g. ``sglang-router`` → the replica
  receiving the HTTP request), ``back`` (the replica's first token → the client reading it);
  each pays the one-way delay of the links it crosses (``wan``), twice that again for every
  link whose connection was opened for this request (``connect``: the link emulates the TCP
  handshake), and whatever is left is the harness's own cost (``residual``);
* ``lb_queue``: time queued in our LBs (each LB's arrival → schedule stamps);
* ``intake``: the replica reading, parsing and tokenizing the request (our simulator's cost,
  counted in the residual);
* ``engine_queue`` (in the engine → scheduled) and ``prefill`` (scheduled → first token).

The top-level parts ``wan + connect + lb_queue + engine_queue + prefill + residual`` are the
TTFT. Behind a balancer that stamps nothing (``sglang-router``, the gateway, a user's own), its
own time cannot be told from the harness's and is in ``residual`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from pytest_lbbench.protocol import HopTiming
from pytest_lbbench.stats import mean, percentile

#: The parts that add up to TTFT, in the order the figure stacks them.
PARTS = ("wan", "connect", "lb_queue", "engine_queue", "prefill", "residual")
#: The path segments whose residual is the harness's cost per hop.
SEGMENTS = ("to_entry", "lb_to_lb", "to_replica", "intake", "back")
PART_LABELS = {
    "wan": "emulated WAN delay",
    "connect": "connection setup",
    "lb_queue": "queued in LBs",
    "engine_queue": "engine queue",
    "prefill": "prefill",
    "residual": "harness residual",
}
_CLIENT = "client@"


@dataclass(frozen=True)
class Topology:
    """What the decomposition needs of a deployment: who is where and each link's delay."""

    #: Client region → the component its requests enter through.
    entry_for: Mapping[str, str]
    #: (source component, or ``client@<region>``; target component) → one-way delay, wall s.
    one_way_s: Mapping[tuple[str, str], float]
    #: Our LBs (those that stamp timing headers) by region.
    lb_in_region: Mapping[str, str]

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> Topology | None:
        """From a deployment's :meth:`describe` (``links``, ``entry_points``, ``balancers``,
        ``time_scale``); ``None`` when it names no links (a cloud backend: real networks)."""
        links = description.get("links") or []
        if not links:
            return None
        scale = float(description.get("time_scale") or 1.0)
        one_way = {
            (str(link["name"]).split(">", 1)[0], str(link["target"])): float(link["one_way_ms"]) * scale / 1000.0
            for link in links
        }
        kinds = {b["name"]: b.get("kind") for b in description.get("balancers") or []}
        lbs = {b["region"]: b["name"] for b in description.get("balancers") or [] if kinds.get(b["name"]) == "sky_lb"}
        return cls(dict(description.get("entry_points") or {}), one_way, lbs)

    def delay(self, src: str, dst: str) -> float:
        """The one-way delay of the link ``src`` → ``dst`` (``KeyError`` if there is none)."""
        return self.one_way_s[(src, dst)]


@dataclass(frozen=True)
class _Segment:
    name: str
    measured: float
    links: tuple[tuple[str, str], ...]
    #: Per link: the connection was opened for this request (None: nobody could tell).
    new: tuple[bool | None, ...]


def decompose(record: Mapping[str, Any], topo: Topology) -> dict[str, Any] | None:
    """The TTFT parts of one successful request, or ``None`` when it failed, has no TTFT, or
    lacks a timestamp (an external replica reports none) or a link on its path."""
    ttft = record.get("ttft")
    if record.get("failed") or ttft is None:
        return None
    rt = record.get("replica_timing") or {}
    try:
        t0 = float(record["start"])
        arrival = float(rt["arrival"])
        received = float(rt.get("received", arrival))
        scheduled = float(rt["scheduled"])
        first_token = float(rt["first_token"])
        entry = topo.entry_for[record["client_region"]]
        replica = str(record["replica"])
    except (KeyError, TypeError, ValueError):
        return None
    client = _CLIENT + str(record["client_region"])
    headers = record.get("headers") or {}
    first, second = HopTiming.parse(headers, "first"), HopTiming.parse(headers, "second")
    # (component, arrive, scheduled, its incoming connection was new) of each LB on the path.
    stamps: list[tuple[str, float, float, bool | None]] = []
    if first is not None and second is not None and first.time_arrive != second.time_scheduled:
        lbs = record.get("lbs") or []
        peer = topo.lb_in_region.get(lbs[0]) if lbs else None
        if peer is None:
            return None
        stamps = [(entry, second.time_arrive, second.time_scheduled, second.new_connection),
                  (peer, first.time_arrive, first.time_scheduled, first.new_connection)]
    elif first is not None:  # one LB (a self-pick stamps both hops: arrival to final schedule)
        arrive = second.time_arrive if second is not None else first.time_arrive
        flag = second.new_connection if second is not None else first.new_connection
        stamps = [(entry, arrive, first.time_scheduled, flag)]
    client_new = record.get("new_connection")
    replica_new = rt.get("new_connection")
    segments: list[_Segment] = []
    if stamps:
        lb0 = stamps[0]
        segments.append(_Segment("to_entry", lb0[1] - t0, ((client, entry),),
                                 (lb0[3] if lb0[3] is not None else client_new,)))
        for (src, _, src_sched, _), (dst, dst_arrive, _, dst_new) in zip(stamps, stamps[1:]):
            segments.append(_Segment("lb_to_lb", dst_arrive - src_sched, ((src, dst),), (dst_new,)))
        last = stamps[-1]
        segments.append(_Segment("to_replica", received - last[2], ((last[0], replica),), (replica_new,)))
        path = [client, *(s[0] for s in stamps), replica]
    elif entry == replica:  # no balancer between
        segments.append(_Segment("to_replica", received - t0, ((client, replica),), (client_new,)))
        path = [client, replica]
    else:  # a balancer that stamps nothing: its own time is in this segment
        segments.append(_Segment("to_replica", received - t0, ((client, entry), (entry, replica)),
                                 (client_new, replica_new)))
        path = [client, entry, replica]
    back = tuple(zip(path[:-1], path[1:]))  # the same links (a link delays both directions)
    segments.append(_Segment("back", t0 + float(ttft) - first_token, back, (False,) * len(back)))
    try:
        hops = {seg.name: _hop(seg, topo) for seg in segments}
    except KeyError:
        return None
    intake = arrival - received
    hops["intake"] = {"measured": intake, "wan": 0.0, "connect": 0.0, "residual": intake}
    parts = {
        "wan": sum(h["wan"] for h in hops.values()),
        "connect": sum(h["connect"] for h in hops.values()),
        "lb_queue": sum(sched - arrive for _, arrive, sched, _ in stamps),
        "engine_queue": scheduled - arrival,
        "prefill": first_token - scheduled,
        "residual": sum(h["residual"] for h in hops.values()),
    }
    new_connections = {seg.name: sum(1 for flag in seg.new if flag) for seg in segments if seg.name != "back"}
    unknown = [seg.name for seg in segments if any(flag is None for flag in seg.new)]
    return {"parts": _rounded(parts), "hops": {k: _rounded(v) for k, v in hops.items()},
            "new_connections": new_connections, "connection_unknown": unknown}


def _hop(seg: _Segment, topo: Topology) -> dict[str, float]:
    delays = [topo.delay(src, dst) for src, dst in seg.links]
    wan = sum(delays)
    connect = sum(2.0 * d for d, new in zip(delays, seg.new) if new)
    return {"measured": seg.measured, "wan": wan, "connect": connect, "residual": seg.measured - wan - connect}


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 7) for k, v in values.items()}  # 0.1 µs: far below any part of interest


def add_parts(records: Iterable[dict[str, Any]], topo: Topology) -> int:
    """Set ``ttft_parts`` on every record (``None`` where :func:`decompose` cannot); returns
    how many got parts."""
    done = 0
    for record in records:
        record["ttft_parts"] = decompose(record, topo)
        done += record["ttft_parts"] is not None
    return done


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    # Means add up (the parts' means are the mean TTFT); percentiles as the latency summary's.
    return {"mean": mean(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99)}


def summarize_parts(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per part and per segment residual: mean, p50, p90, p99 (seconds) over the records that
    have parts; new connections per segment; how many successful requests had none."""
    with_parts = [r["ttft_parts"] for r in records if r.get("ttft_parts")]
    hops: dict[str, dict[str, list[float]]] = {}
    for parts in with_parts:
        for name, hop in parts["hops"].items():
            for key in ("measured", "residual"):
                hops.setdefault(name, {}).setdefault(key, []).append(hop[key])
    new: dict[str, int] = {}
    for parts in with_parts:
        for name, count in parts["new_connections"].items():
            new[name] = new.get(name, 0) + int(count)
    return {
        "requests": len(with_parts),
        "parts": {name: _percentiles([p["parts"][name] for p in with_parts]) for name in PARTS},
        "hop_residual": {name: _percentiles(hops[name]["residual"]) for name in SEGMENTS if name in hops},
        "hop_measured": {name: _percentiles(hops[name]["measured"]) for name in SEGMENTS if name in hops},
        "new_connections": new,
    }
