"""Tenants: token metering, limits and budgets per tenant, with in-process and Redis backends.

Layer L2 (below routing, which calls admission; above state). The only importer of ``redis``. See
``picker/tenants/README.md`` for the formulas and the configuration.
"""

from __future__ import annotations

from picker.tenants.backend import (
    AccountView,
    Backend,
    MemoryBackend,
    NullSink,
    Settlement,
    UsageSink,
    Verdict,
)
from picker.tenants.estimate import TokenEstimator, load_tokenizer
from picker.tenants.identity import FAIRNESS_HEADER, OTHER, TenantIds
from picker.tenants.meter import PendingTicket, Tenancy, Ticket
from picker.tenants.metrics import TenantMetrics
from picker.tenants.policy import Price, TenantsPolicy

__all__ = [
    "FAIRNESS_HEADER",
    "OTHER",
    "AccountView",
    "Backend",
    "MemoryBackend",
    "NullSink",
    "PendingTicket",
    "Price",
    "Settlement",
    "Tenancy",
    "TenantIds",
    "TenantMetrics",
    "TenantsPolicy",
    "Ticket",
    "TokenEstimator",
    "UsageSink",
    "Verdict",
    "load_tokenizer",
]
