"""Test doubles shipped with the code, for tests, the demo and benchmarks (never imported by the service)."""
