#!/usr/bin/env python3
"""Regenerates the grpcio stubs in src/rewarddance/v1 from <repo>/proto.

    python tools/gen_stubs.py            # rewrite the committed stubs
    python tools/gen_stubs.py --out DIR  # write DIR/rewarddance/v1/... (used by the staleness test)

Needs grpcio-tools (pinned in pyproject's `test` extra: the output depends on its version). The
proto package `rewarddance.v1` lands at `rewarddance/v1/` inside our own `rewarddance` package, so
the import that protoc writes into reward_pb2_grpc.py (`from rewarddance.v1 import reward_pb2`)
is already right and nothing is rewritten after generation.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
CLIENT_ROOT = HERE.parent
PROTO_ROOT = CLIENT_ROOT.parent.parent / "proto"
PROTO_FILES = ["rewarddance/v1/reward.proto"]
GENERATED = ["rewarddance/v1/reward_pb2.py", "rewarddance/v1/reward_pb2.pyi", "rewarddance/v1/reward_pb2_grpc.py"]


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    return [out / g for g in GENERATED]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=CLIENT_ROOT / "src")
    args = ap.parse_args()
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
