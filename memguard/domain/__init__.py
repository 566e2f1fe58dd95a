"""Decisions without I/O: modes, failure classification, the forced record's validity rule,
the fleet-status arithmetic and the events the other layers hand to subscribers.

Depends on ``memguard.config`` only; never talks to Redis, Zep or the network.
"""
