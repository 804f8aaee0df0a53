"""Host sources: one module per source, each a pure read over a HostPaths root.

Sources import neither an HTTP server, prometheus_client nor a Kubernetes client, and not each other.
"""
