"""The store: memguard's key names, its Lua scripts and their blocking and asyncio executors.

Every change to the fleet state is one script run here (``State``); above this layer nobody
writes a memguard key by hand. Depends on ``memguard.config`` and ``memguard.domain``.
"""
