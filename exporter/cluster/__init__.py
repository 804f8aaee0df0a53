"""Commands over the whole cluster (`fit`, `explain`, `summary`), read from the objects the agents publish.

Independent of the agent: it shares the API client (`exporter.kubeapi`) and the kubelet's rules, nothing else.
"""
