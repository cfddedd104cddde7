"""Golden files of our own outputs. The service harness is shared with ``tests/integration/service``."""

from tests.integration.service.conftest import start_service

__all__ = ["start_service"]
