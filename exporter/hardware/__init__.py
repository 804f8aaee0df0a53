"""What the machine is: NUMA nodes, CPUs, memory and its kinds, devices and the PCIe tree between them.

Built from `exporter.sources` reads; knows nothing of the kubelet.
"""
