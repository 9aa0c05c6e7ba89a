"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside REST.

Imported only when ``LOSSREG_GRPC_PORT`` is not 0, so the HTTP server does not need grpcio.
"""
