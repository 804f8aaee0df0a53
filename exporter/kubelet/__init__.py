"""The kubelet's decisions reproduced: what its CPU, memory, device and DRA managers handed out, what it
reserves at start, what it admits, and how each container is aligned.

Pure functions over the model; the kubelet (and kubelet-oracle) is the truth they are tested against.
"""
