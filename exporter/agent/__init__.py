"""The long-running agent: the refresh loop and its triggers, the HTTP server, the NRT writer and the watches.

Nothing outside this package imports it but the CLI (`serve`); it calls the API through `exporter.kubeapi`,
and its API calls run in daemon threads: a slow or dead API server never blocks the event loop, metrics, or
shutdown.
"""
