"""``--custom-system``: a user's own balancer behind our replicas and delay links."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pytest_lbbench.custom import CustomSystemError, parse_custom_system, render_command
from pytest_lbbench.systems import BalancerKind, Placement

FAST = ("--time-scale", "0.05", "--max-tokens", "12", "--num-users", "3", "--replicas", "3",
        "--duration", "3", "--drain-timeout", "20", "-p", "no:cacheprovider")

# A small round-robin balancer as a user would write one: every request to the next worker,
# the response streamed back with the upstream's headers (the replica names itself in one).
ROUND_ROBIN_LB = '''
import argparse, itertools
from aiohttp import ClientSession, ClientTimeout, web

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--workers", nargs="+", required=True)
parser.add_argument("--peers", nargs="*", default=[])
args = parser.parse_args()
print("peers:", " ".join(args.peers) or "none", flush=True)
workers = itertools.cycle(args.workers)
HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}

async def proxy(request):
    worker = next(workers)
    body = await request.read()
    async with request.app["session"].request(
            request.method, worker + request.path_qs, data=body,
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")}) as up:
        resp = web.StreamResponse(status=up.status, headers={k: v for k, v in up.headers.items() if k.lower() not in HOP})
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

async def start(app):
    app["session"] = ClientSession(timeout=ClientTimeout(total=120))

async def stop(app):
    await app["session"].close()

app = web.Application()
app.on_startup.append(start)
app.on_cleanup.append(stop)
app.router.add_route("*", "/{tail:.*}", proxy)
web.run_app(app, host=args.host, port=args.port, print=None)
'''


@pytest.fixture
def rr_lb(bench: pytest.Pytester) -> Path:
    path = bench.path / "rr_lb.py"
    path.write_text(ROUND_ROBIN_LB)
    return path


def test_parse_forms() -> None:
    spec = parse_custom_system("mylb=python lb.py --port {port} --workers {worker_urls}")
    assert spec.kind is BalancerKind.CUSTOM and spec.placement is Placement.GLOBAL and spec.name == "mylb"
    regional = parse_custom_system("mine@regional=lb --port={port} --peers {peer_urls_csv}")
    assert regional.placement is Placement.REGIONAL and regional.command == "lb --port={port} --peers {peer_urls_csv}"


@pytest.mark.parametrize(("text", "says"), [
    ("mylb", "expected NAME=COMMAND"),
    ("my-lb=lb --port {port}", "must be lowercase letters, digits and '_'"),
    ("mylb@edge=lb --port {port}", "placement 'edge' must be one of global, regional"),
    ("mylb=lb --port {port} --w {workers}", "unknown placeholder(s) {workers}; valid: {host}, {port}"),
    ("mylb=lb --listen 8000", "must listen on {port}"),
    ("mylb=lb --port {port} --peers {peer_urls}", "needs several instances; use mylb@regional"),
    ("mylb=lb --port {port} 'unclosed", "cannot split the command"),
])
def test_parse_errors_say_what_is_valid(text: str, says: str) -> None:
    with pytest.raises(CustomSystemError) as info:
        parse_custom_system(text)
    assert says in str(info.value)


def test_render_expands_lists_as_words_and_keeps_json_whole() -> None:
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    argv = render_command("lb --port {port} --workers {worker_urls} --csv={worker_urls_csv} --json {worker_urls_json} "
                          "--in 'a {worker_urls} b' --lit {{x}}",
                          {"port": "9", "worker_urls": urls})
    assert argv == ["lb", "--port", "9", "--workers", *urls, f"--csv={','.join(urls)}", "--json", json.dumps(urls),
                    "--in", f"a {' '.join(urls)} b", "--lit", "{x}"]


def test_a_global_custom_balancer_runs_through_a_real_benchmark(bench: pytest.Pytester, rr_lb: Path) -> None:
    out = bench.path / "results"
    system = f"rr={sys.executable} {rr_lb} --port {{port}} --workers {{worker_urls}}"
    common = ("--custom-system", system, "--systems", "rr", "--regions", "us-east-2", "--output-dir", str(out),
              "--lbbench-storage", str(bench.path / "store"), *FAST)
    # In a subprocess, as a user runs it.
    first = bench.runpytest_subprocess(*common, "--lbbench-save", "base", timeout=300)
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(["*lbbench: backend=local systems=rr *", "rr *all*"])
    data = json.loads((out / "latest" / "metric" / "arena_syn_rr" / "us-east-2.json").read_text())
    records = data["metrics"]
    assert records and not [r for r in records if r["failed"]]
    # Round robin over every replica (global: one instance over all three regions' replicas).
    assert len({r["replica"] for r in records}) == 3
    assert data["deployment"]["system"]["kind"] == "custom"
    assert data["deployment"]["balancers"] == [{"name": "rr", "region": "us-east-2", "kind": "custom"}]
    assert list((out / "latest" / "fig").glob("*.png")), "no figures"
    ticks = [json.loads(line) for line in (out / "latest" / "queue_size" / "arena_syn_rr.txt").read_text().splitlines()]
    assert "custom" in {v.get("kind") for tick in ticks for k, v in tick.items() if k != "time"}
    # Gates by its name: the compare finds rr-arena_syn in the saved run and holds it to 10000 %.
    second = bench.runpytest(*common, "--lbbench-compare", "base", "--lbbench-fail", "ttft_p90_s:10000%")
    second.assert_outcomes(passed=1)
    assert "not in baseline" not in second.stdout.str()


def test_a_regional_custom_balancer_gets_its_region_and_its_peers(bench: pytest.Pytester, rr_lb: Path) -> None:
    out = bench.path / "results"
    system = f"rr@regional={sys.executable} {rr_lb} --port {{port}} --workers {{worker_urls}} --peers {{peer_urls}}"
    result = bench.runpytest("--custom-system", system, "--systems", "rr", "--regions", "us-east-2,ap-northeast-1",
                             "--output-dir", str(out), *FAST)
    result.assert_outcomes(passed=1)
    for region in ("us-east-2", "ap-northeast-1"):
        data = json.loads((out / "latest" / "metric" / "arena_syn_rr" / f"{region}.json").read_text())
        # Each client reaches its own region's instance, which knows only that region's replica.
        assert {r["replica"] for r in data["metrics"]} == {f"replica-{'0' if region == 'us-east-2' else '1'}-{region}"}
    balancers = {b["name"] for b in data["deployment"]["balancers"]}
    assert balancers == {"rr-us-east-2", "rr-ap-northeast-1", "rr-eu-central-1"}
    # Its two peers, through their delay links (one line per start: at start-up and at the reset).
    log = (out / "latest" / "logs" / "rr" / "rr-us-east-2.log").read_text()
    starts = [line for line in log.splitlines() if line.startswith("peers:")]
    assert len(starts) == 2 and starts[-1].count("http://127.0.0.1:") == 2, log


@pytest.mark.parametrize(("command", "says"), [
    ("no-such-balancer-xyz --port {port} --w {worker_urls}", "*command not found: 'no-such-balancer-xyz'*"),
    (f"{sys.executable} -c 'import sys; print(\"bad flag\"); sys.exit(3)' {{port}}",
     "*rr exited with code 3 before it was ready.*"),
])
def test_a_custom_balancer_that_cannot_start_stops_the_run_with_why(bench: pytest.Pytester, command: str, says: str) -> None:
    result = bench.runpytest("--custom-system", f"rr={command}", "--systems", "rr", "--regions", "us-east-2", *FAST)
    assert result.ret != 0
    result.stdout.fnmatch_lines([says])
    if "exited" in says:
        result.stdout.fnmatch_lines(["*command: *-c*", "*bad flag*"])
