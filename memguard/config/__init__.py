"""Configuration: the settings read from the environment, and where memguard's Redis is.

The lowest layer: nothing here imports another part of memguard.
"""
