"""A descriptor pool of our own for the generated modules.

tritonclient, the KServe SDK and MLServer each register their own copy of the
`inference.*` v2 messages in protobuf's default pool, with different file
contents; a second registration of the same names fails ("duplicate symbol").
Our modules therefore register in this private pool, so the mesh can share a
process with any of those clients (benchmarks, tests, user code). The wire
format is unaffected: pools only scope the Python-side names.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
