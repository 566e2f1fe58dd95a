"""Integrations with frameworks memguard does not depend on (imported only when used)."""
