"""Pure renderings of one snapshot: Prometheus metrics, tables and JSON, the NRT object, doctor and verify."""
