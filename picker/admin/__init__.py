"""The EPP's HTTP surfaces: the metrics port (/metrics, /healthz, /readyz; ``build_metrics_app``) and the
localhost admin port (/config, /debug/*; ``build_admin_app``, :mod:`picker.admin.app`), each served by
:mod:`picker.admin.server`.

The package imports none of its modules itself: a ``--workers`` worker serves no HTTP, and importing the
package for :class:`picker.admin.server.HttpServer`'s name would load the web framework (more than half a
second of CPU on every worker start).
"""
