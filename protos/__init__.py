"""Wire contracts: the v2 inference protocol, the model-runtime SPI and the
management API (sources and generated modules), plus the tensor codec that
translates v2 tensors to and from numpy for both the sidecar and the runtimes.
"""
