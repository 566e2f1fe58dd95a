"""Observation: Prometheus metrics and structured logs, each an event subscriber.

Depends on the domain (events, status arithmetic) and the store's snapshot type only.
"""
