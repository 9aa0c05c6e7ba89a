"""lossreg's own protobuf descriptor pool for the generated modules (see generate.py)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
