"""The drill's tooling, optional and apart: the Zep-compatible stub with fault injection,
private redis-server and Celery processes, and the live drill (``memguard drill``).

Nothing in memguard's core imports this subpackage; tests, benchmarks and the drill do.
"""
