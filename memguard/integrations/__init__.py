"""Integrations: Celery (``install``, the four tasks, beat), and the command line.

Entry points: they resolve the process's objects through ``memguard.process`` when called.
Django's integration is ``memguard.contrib.django``.
"""
