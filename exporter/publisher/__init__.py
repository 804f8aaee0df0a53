"""Everything that talks to the Kubernetes API: the NRT writer and the pods-on-this-node watch.

The only package that imports the `kubernetes` client. Calls are synchronous in that client, so they run
in daemon threads: a slow or dead API server never blocks the event loop, metrics, or shutdown.
"""
