"""The EPP's HTTP surfaces: the metrics port (/metrics, /healthz, /readyz; ``build_metrics_app``) and the
localhost admin port (/config, /debug/*; ``build_admin_app``)."""

from picker.admin.app import build_admin_app
from picker.admin.metrics import build_metrics_app

__all__ = ["build_admin_app", "build_metrics_app"]
