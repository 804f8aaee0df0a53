"""numa-topology-exporter: makes NUMA topology visible and schedulable."""

__version__ = "0.1.0"

DEFAULT_PORT = 9709
