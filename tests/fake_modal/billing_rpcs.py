"""The billing RPCs: the workspace's rates, and a cost report computed from what the fake's
containers actually ran.

``FakeModal.billing_rates`` (default `DEFAULT_RATES`, the shape `modal billing rates --json`
shows: USD per hour) answers ``WorkspaceBillingRates``. ``WorkspaceBillingReport`` bills every
attempt of every call from its start to its end (or now, while it runs) at its function's
rates: GPUs x the GPU type's rate, reserved cores (Modal's default 0.125 when none) x the CPU
rate, reserved memory (default 128 MiB) x the memory rate; split at interval boundaries (an
hour, or a day), summed per app and interval, with the app's tags that the request names.
As Modal documents, the start is rounded down to its interval and an interval that the end
cuts short is left out: the interval under way is not billed yet. `backdate` moves what ran
into the past, so a test can bill whole hours without waiting for one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from google.protobuf.empty_pb2 import Empty
from modal_proto import api_pb2

from .rpc import ENVIRONMENT, ServicerBase, streaming, unary

if TYPE_CHECKING:
    from .fake import FakeModal

# As `modal billing rates --json` prints them (rates seen in public notes, mid-2026).
DEFAULT_RATES = {
    "cpu_hour_cost": "0.0473",
    "cpu_hour_cost_sandbox": "0.1419",
    "mem_gib_hour_cost": "0.008",
    "mem_gib_hour_cost_sandbox": "0.024",
    "gpu_hour_cost_t4": "0.59",
    "gpu_hour_cost_l4": "0.80",
    "gpu_hour_cost_a10g": "1.10",
    "gpu_hour_cost_l40s": "1.95",
    "gpu_hour_cost_a100_40gb": "2.10",
    "gpu_hour_cost_a100_80gb": "2.50",
    "gpu_hour_cost_h100": "3.95",
    "gpu_hour_cost_h200": "4.54",
    "gpu_hour_cost_b200": "6.25",
    "volume_storage_gib_month_cost": "0.09",
}
_GPU_KEYS = {"A10": "a10g", "A100": "a100_40gb"}  # Modal's GPU names whose key differs
_DEFAULT_CPU, _DEFAULT_MEMORY_MB = 0.125, 128
_INTERVAL_S = {"h": 3600, "d": 86400}


def backdate(fake: FakeModal, seconds: float) -> None:
    """Move every call and attempt ``seconds`` into the past (call it once they ended)."""
    for call in fake.calls.values():
        call["created_at"] -= seconds
        for attempt in call["attempts"]:
            attempt["started"] -= seconds
            if attempt["ended"] is not None:
                attempt["ended"] -= seconds


def per_second(fake: FakeModal, function: dict[str, Any]) -> dict[str, Decimal]:
    """USD a second of the function's container costs, by resource (Modal's names)."""
    rates = {k: Decimal(v) / 3600 for k, v in fake.billing_rates.items()}
    out = {"CPU": Decimal(str(function["cpu"] or _DEFAULT_CPU)) * rates["cpu_hour_cost"],
           "Memory": Decimal(function["memory_mb"] or _DEFAULT_MEMORY_MB) / 1024
           * rates["mem_gib_hour_cost"]}
    if function["gpu"]:
        kind, _, count = function["gpu"].partition(":")
        key = _GPU_KEYS.get(kind, kind.lower().replace("-", "_"))
        out[kind] = int(count or 1) * rates[f"gpu_hour_cost_{key}"]
    return out


def usage(fake: FakeModal, step: int) -> dict[tuple[str, int], dict[str, Decimal]]:
    """(app id, interval start) -> cost by resource, from every attempt so far."""
    out: dict[tuple[str, int], dict[str, Decimal]] = {}
    now = time.time()
    for call in fake.calls.values():
        rate = per_second(fake, fake.functions[call["function_id"]])
        for attempt in call["attempts"]:
            begin, end = attempt["started"], attempt["ended"] or now
            while begin < end:
                interval = int(begin // step * step)
                seconds = Decimal(str(min(end, interval + step) - begin))
                costs = out.setdefault((call["app_id"], interval), {})
                for resource, usd in rate.items():
                    costs[resource] = costs.get(resource, Decimal(0)) + usd * seconds
                begin = interval + step
    return out


class BillingRpcs(ServicerBase):
    @unary
    async def WorkspaceNameLookup(self, request: Empty) -> api_pb2.WorkspaceNameLookupResponse:
        return api_pb2.WorkspaceNameLookupResponse(workspace_name="fake", username="fake-user")

    @unary
    async def WorkspaceBillingRates(
        self, request: api_pb2.WorkspaceBillingRatesRequest
    ) -> api_pb2.WorkspaceBillingRatesResponse:
        rates = dict(self.fake.billing_rates)
        formatted = "\n".join(f"{k}: ${v}" for k, v in sorted(rates.items()))
        return api_pb2.WorkspaceBillingRatesResponse(rates=rates, formatted=formatted)

    @streaming
    async def WorkspaceBillingReport(
        self, request: api_pb2.WorkspaceBillingReportRequest
    ) -> AsyncIterator[api_pb2.WorkspaceBillingReportItem]:
        step = _INTERVAL_S[request.resolution or "d"]
        start = request.start_timestamp.ToDatetime(tzinfo=UTC).timestamp() // step * step
        end = request.end_timestamp.ToDatetime(tzinfo=UTC).timestamp()
        names = set(request.tag_names)
        for (app_id, interval), costs in sorted(usage(self.fake, step).items()):
            if not start <= interval <= end - step:
                continue
            app = self.fake.apps[app_id]
            item = api_pb2.WorkspaceBillingReportItem(
                object_id=app_id,
                description=app["description"],
                environment_name=ENVIRONMENT,
                cost=str(round(sum(costs.values()), 9)),
                cost_by_resource={k: str(round(v, 9)) for k, v in costs.items()},
                tags={k: v for k, v in app["tags"].items() if "*" in names or k in names},
            )
            item.interval.FromDatetime(datetime.fromtimestamp(interval, UTC))
            yield item
