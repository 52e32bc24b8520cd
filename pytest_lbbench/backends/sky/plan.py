"""What a ``--backend sky`` run would create, and its estimated hourly cost — offline.

The plan renders the same components :class:`~.deployment.SkyDeployment` would provision
(:mod:`.render`), resolves each to the instance type SkyPilot's optimizer picks for it on the
chosen cloud (a small table, below), and prices it from :data:`PRICES`. Nothing here contacts a
cloud, the API server or the network, and nothing needs credentials or the ``sky`` extra.

Prices are *estimates* for planning: the table says where each number comes from, and
``sky launch --dryrun`` / ``sky show-gpus L4 --infra aws`` give the live figure.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pytest_lbbench.backends.sky.render import (
    GKE_HINT,
    Component,
    SkySettings,
    UnsupportedSystem,
    client_cluster_name,
    remote_job_file,
    render_clients,
    render_system,
)
from pytest_lbbench.systems import BalancerKind, SystemSpec

PRICE_DATE = "2025-06"
PRICE_SOURCE = (
    "AWS EC2 on-demand Linux list prices (aws.amazon.com/ec2/pricing/on-demand) for us-east-1/-2; "
    "other AWS regions are the us-east-2 price × the region's m6i.large price ratio, marked '~'; "
    "GCP figures are rough estimates, marked '~'. Check live prices with `sky launch --dryrun`."
)

# (cloud, accelerator or "", minimum vCPUs) → instance type SkyPilot resolves to (cheapest match).
INSTANCE_TYPES: dict[tuple[str, str, int], str] = {
    ("aws", "L4:1", 16): "g6.4xlarge",  # the original README's replicas
    ("aws", "L4:1", 4): "g6.xlarge",
    ("aws", "A10G:1", 16): "g5.4xlarge",
    ("aws", "A10G:1", 4): "g5.xlarge",
    ("aws", "", 2): "m6i.large",  # the original README's LB VMs
    ("aws", "", 4): "m6i.xlarge",
    ("aws", "", 8): "m6i.2xlarge",
    ("aws", "", 16): "m6i.4xlarge",
    ("gcp", "L4:1", 16): "g2-standard-16",
    ("gcp", "L4:1", 4): "g2-standard-4",
    ("gcp", "", 2): "n2-standard-2",
    ("gcp", "", 4): "n2-standard-4",
    ("gcp", "", 8): "n2-standard-8",
    ("gcp", "", 16): "n2-standard-16",
}

# USD per hour in the reference region of each cloud (us-east-2, us-central1).
PRICES: dict[str, float] = {
    "g6.xlarge": 0.8048,
    "g6.4xlarge": 1.3232,
    "g5.xlarge": 1.006,
    "g5.4xlarge": 1.624,
    "m6i.large": 0.096,
    "m6i.xlarge": 0.192,
    "m6i.2xlarge": 0.384,
    "m6i.4xlarge": 0.768,
    "g2-standard-4": 0.71,
    "g2-standard-16": 1.15,
    "n2-standard-2": 0.097,
    "n2-standard-4": 0.194,
    "n2-standard-8": 0.388,
    "n2-standard-16": 0.777,
}
REFERENCE_REGIONS = {"aws": ("us-east-1", "us-east-2"), "gcp": ("us-central1",)}
# AWS regional factors: m6i.large list price in the region / in us-east-2 (0.096).
REGION_FACTORS: dict[str, float] = {
    "us-east-1": 1.0, "us-east-2": 1.0, "us-west-2": 1.0,
    "ap-northeast-1": 0.124 / 0.096, "eu-central-1": 0.115 / 0.096, "eu-west-1": 0.107 / 0.096,
}
# SkyServe runs one controller VM per user (default controller resources: 4+ vCPUs).
CONTROLLER_CPUS = 4


def _min_cpus(cpus: str) -> int:
    try:
        return int(float(cpus.rstrip("+")))
    except ValueError:
        return 2


def instance_type(cloud: str, accelerator: str, cpus: str) -> str | None:
    """The instance type for these resources, or ``None`` if the table does not know it."""
    wanted = _min_cpus(cpus)
    options = sorted(
        (c, name) for (cl, acc, c), name in INSTANCE_TYPES.items()
        if cl == cloud and acc == accelerator and c >= wanted
    )
    return options[0][1] if options else None


def hourly_price(cloud: str, itype: str | None, region: str) -> tuple[float | None, bool]:
    """``(USD per hour, is_estimate)``; ``None`` when unknown."""
    if itype is None or itype not in PRICES:
        return None, True
    base = PRICES[itype]
    if region in REFERENCE_REGIONS.get(cloud, ()):
        return base, cloud != "aws"
    factor = REGION_FACTORS.get(region) if cloud == "aws" else 1.0
    if factor is None:
        return None, True
    return round(base * factor, 4), True


@dataclass(frozen=True)
class PlanItem:
    """One cluster or service of the plan."""

    section: str  # a system name, "clients" or "skypilot"
    kind: str
    name: str
    role: str
    region: str
    count: int
    instance_type: str | None
    accelerator: str
    unit_usd_per_h: float | None
    estimate: bool
    commands: tuple[str, ...]

    @property
    def usd_per_h(self) -> float | None:
        return None if self.unit_usd_per_h is None else self.unit_usd_per_h * self.count


@dataclass
class Plan:
    """Everything a run would create; :meth:`render` is what ``--lbbench-plan`` prints."""

    settings: SkySettings
    items: list[PlanItem] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section → why nothing is provisioned
    components: list[Component] = field(default_factory=list)
    header: str = ""

    @property
    def vms(self) -> int:
        return sum(i.count for i in self.items)

    @property
    def total_usd_per_h(self) -> float:
        return sum(i.usd_per_h or 0.0 for i in self.items)

    @property
    def unpriced(self) -> list[PlanItem]:
        return [i for i in self.items if i.usd_per_h is None]

    def render(self) -> str:
        lines = [self.header] if self.header else []
        sections = list(dict.fromkeys([i.section for i in self.items] + list(self.notes)))
        for section in sections:
            lines.append(f"\n[{section}]")
            if section in self.notes:
                lines.append(f"  {self.notes[section]}")
            for item in (i for i in self.items if i.section == section):
                price = "price unknown" if item.usd_per_h is None else (
                    f"{'~' if item.estimate else ''}${item.usd_per_h:.2f}/h")
                itype = item.instance_type or "instance type unknown"
                acc = f" ({item.accelerator})" if item.accelerator else ""
                lines.append(f"  {item.kind:<7} {item.name:<40} {item.region:<15} "
                             f"{item.count} x {itype}{acc}  {price}")
                for cmd in item.commands:
                    lines.append(f"      $ {cmd}")
        gpu = sum(i.usd_per_h or 0.0 for i in self.items if i.accelerator)
        lines.append("")
        lines.append(
            f"Total: {self.vms} VMs, estimated ${self.total_usd_per_h:.2f}/h while up "
            f"(GPU replicas ${gpu:.2f}/h), excluding storage, egress and the GKE gateway."
        )
        if self.unpriced:
            lines.append("No price for: " + ", ".join(i.name for i in self.unpriced) + ".")
        lines.append(f"Prices as of {PRICE_DATE}: {PRICE_SOURCE}")
        return "\n".join(lines)


def _main_line(script: str) -> str:
    """The command that matters in a run script: its last non-comment line."""
    for line in reversed(script.splitlines()):
        if line.strip() and not line.strip().startswith("#"):
            return line.strip()
    return ""


def _component_item(section: str, comp: Component, settings: SkySettings, yaml_dir: Path | None) -> PlanItem:
    resources = comp.task.get("resources", {})
    accelerator = str(resources.get("accelerators", ""))
    itype = instance_type(settings.cloud, accelerator, str(resources.get("cpus", "2+")))
    price, estimate = hourly_price(settings.cloud, itype, comp.region)
    yaml_path = str(yaml_dir / f"{comp.name}.yaml") if yaml_dir else f"<{comp.name}.yaml>"
    secrets = " ".join(f"--secret {name}" for name in comp.secrets)
    if comp.kind == "service":
        commands = [f"sky serve up -n {comp.name} {yaml_path} {secrets}".strip()]
    else:
        commands = [f"sky launch -c {comp.name} --fast {yaml_path}"]
    run = comp.task.get("run")
    if isinstance(run, str) and run.strip():
        commands.append(_main_line(run).split("&& ")[-1])
    return PlanItem(section, comp.kind, comp.name, comp.role, comp.region, comp.count, itype,
                    accelerator, price, estimate, tuple(commands))


def build_plan(
    systems: Sequence[SystemSpec],
    settings: SkySettings,
    *,
    replicas: int,
    replica_regions: Sequence[str],
    client_regions: Sequence[str],
    endpoints: Mapping[str, str] | None = None,
    client_argv: Callable[[SystemSpec, str], Sequence[str]] | None = None,
    worker: str = "",
    yaml_dir: Path | None = None,
    gke_plan: Callable[[SystemSpec], list[PlanItem] | str | None] | None = None,
) -> Plan:
    """The plan of a sky run of ``systems`` (see the module docstring).

    ``endpoints``: systems given by ``--endpoint``/``--service-names`` (nothing provisioned).
    ``client_argv(system, region)``: the client command per system, shown as the ``sky exec``.
    ``gke_plan``: the GKE backend's planner for the gateway system, if that backend exists.
    """
    plan = Plan(settings)
    endpoints = dict(endpoints or {})
    any_provisioned = False
    for system in systems:
        if system.name in endpoints:
            plan.notes[system.name] = f"not provisioned: existing endpoint {endpoints[system.name]}"
            continue
        if system.kind is BalancerKind.GATEWAY:
            gke = gke_plan(system) if gke_plan is not None else None
            if isinstance(gke, list):
                plan.items.extend(gke)
            else:
                plan.notes[system.name] = gke or f"not provisioned: {GKE_HINT}"
            continue
        try:
            layout = render_system(system, settings, replicas, replica_regions)
        except UnsupportedSystem as exc:
            plan.notes[system.name] = f"not provisioned: {exc}"
            continue
        any_provisioned = True
        for comp in layout.components:
            plan.components.append(comp)
            plan.items.append(_component_item(system.name, comp, settings, yaml_dir))
    clients = render_clients(settings, client_regions, worker)
    for comp in clients:
        plan.components.append(comp)
        item = _component_item("clients", comp, settings, yaml_dir)
        commands = list(item.commands)
        if client_argv is not None:
            for system in systems:
                if system.kind is BalancerKind.GATEWAY and system.name not in endpoints:
                    continue
                argv = client_argv(system, comp.region)
                # What runs is the job file pytest builds (plan included), shipped as the exec's
                # workdir; the arguments show what it holds (and build it by hand on a VM).
                commands.append(
                    f"sky exec {client_cluster_name(settings, comp.region, worker)} -- "
                    + shlex.quote(f"python -m pytest_lbbench.client --job-file {remote_job_file(comp.region)}")
                    + "  # the job built here: python -m pytest_lbbench.client "
                    + " ".join(shlex.quote(a) for a in argv)
                )
        plan.items.append(PlanItem(**{**item.__dict__, "commands": tuple(commands)}))
    if any_provisioned:
        itype = instance_type(settings.cloud, "", f"{CONTROLLER_CPUS}+")
        region = REFERENCE_REGIONS.get(settings.cloud, ("?",))[-1]
        price, _ = hourly_price(settings.cloud, itype, region)
        plan.items.append(PlanItem(
            "skypilot", "cluster", "sky-serve-controller-<user>", "controller",
            "(chosen by SkyPilot)", 1, itype, "", price, True,
            ("started by the first `sky serve up`; `sky down sky-serve-controller-<user>` "
             "after the last service is down",),
        ))
    return plan
