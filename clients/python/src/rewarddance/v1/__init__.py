"""Generated protobuf and grpcio stubs for `rewarddance.v1` (see tools/gen_stubs.py).

`reward_pb2` holds the messages (ScoreRequest, ScoreItem, Image, ...), `reward_pb2_grpc` the
`RewardServiceStub` and `RewardServiceServicer`. Do not edit the generated files by hand.
"""
