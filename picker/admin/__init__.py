"""The admin HTTP surface on the metrics port: /metrics, /healthz, /readyz, /debug/*, /config."""

from picker.admin.app import build_admin_app

__all__ = ["build_admin_app"]
