"""The committed stubs in src/rewarddance/v1 are what tools/gen_stubs.py makes from proto/ now."""
import importlib.util
import pathlib
import re

import pytest

CLIENT_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = CLIENT_ROOT / "src"


def _generated_with() -> str:
    text = (COMMITTED / "rewarddance/v1/reward_pb2_grpc.py").read_text()
    return re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1)


def test_stubs_are_current(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools not installed (pip install -e '.[test]')")
    from importlib.metadata import version

    have, want = version("grpcio-tools"), _generated_with()
    if have != want:
        pytest.skip(f"stubs were generated with grpcio-tools {want}, installed is {have}: output differs by version")
    spec = importlib.util.spec_from_file_location("gen_stubs", CLIENT_ROOT / "tools" / "gen_stubs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    if not (gen.PROTO_ROOT / gen.PROTO_FILES[0]).exists():
        pytest.skip(f"{gen.PROTO_ROOT} not found (not running from the repository)")
    stale = []
    for fresh in gen.generate(tmp_path):
        rel = fresh.relative_to(tmp_path)
        committed = COMMITTED / rel
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(rel))
    assert not stale, f"stale generated stubs {stale}: run `python tools/gen_stubs.py` in clients/python"


def test_stub_import_path():
    # protoc writes `from rewarddance.v1 import reward_pb2` into the grpc module; it must resolve
    # to this package's own messages.
    from rewarddance.v1 import reward_pb2, reward_pb2_grpc

    assert reward_pb2_grpc.rewarddance_dot_v1_dot_reward__pb2 is reward_pb2
    assert reward_pb2.DESCRIPTOR.package == "rewarddance.v1"
