"""Regenerate the Python modules of the .proto files beside this script.

    pip install grpcio-tools==1.74.0 && python service/lossreg_service/server/grpc/proto/generate.py

(in a scratch virtual environment: grpcio-tools 1.74 writes code that needs protobuf >= 6.31
and grpcio >= 1.74, the server extra's floors; a newer grpcio-tools would raise them.)

grpcio-tools writes ``*_pb2.py`` / ``*_pb2_grpc.py``; two edits follow, both for living in one
process with other users of the same protocol (tritonclient.grpc, tests, notebooks):

- the messages go into lossreg's own descriptor pool (`_pool.POOL`) instead of protobuf's
  default one, where tritonclient registers the full Triton protos under the same names (two
  different files defining ``inference.ModelInferRequest`` cannot share a pool);
- ``import model_config_pb2`` becomes a relative import, as the modules live in a package.
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent
PROTOS = ["model_config.proto", "grpc_service.proto"]


def main() -> int:
    for proto in PROTOS:
        args = ["protoc", f"-I{HERE}", f"--python_out={HERE}", f"--pyi_out={HERE}", proto]
        if proto == "grpc_service.proto":
            args.insert(2, f"--grpc_python_out={HERE}")
        if protoc.main(args) != 0:
            print(f"protoc failed on {proto}", file=sys.stderr)
            return 1
    for path in sorted(HERE.glob("*_pb2*.py")):
        text = path.read_text()
        text = text.replace(
            "from google.protobuf import descriptor_pool as _descriptor_pool\n",
            "from google.protobuf import descriptor_pool as _descriptor_pool  # noqa: F401\n"
            "from ._pool import POOL\n",
        )
        text = text.replace(
            "_descriptor_pool.Default().AddSerializedFile", "POOL.AddSerializedFile"
        )
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
