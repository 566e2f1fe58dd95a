"""Operations: force, clear, status and probe with their input checks, the probe itself,
the audit trail and webhook notifications. Depends on the request path and below.
"""
