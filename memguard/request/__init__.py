"""The request path: the in-process view, the guard around each read, the read meter and
the Zep reader adapter. Depends on the store, the domain and the configuration.
"""
