"""The gRPC protocol: ``.proto`` files written from the published OIP/Triton specification and
the Python modules ``generate.py`` made from them (committed; regenerate after editing)."""
