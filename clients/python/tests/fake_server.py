"""A tiny in-process RewardService for tests that need control over failures (retries,
deadlines, ordering) or must run without the real server.

Scores are a deterministic function of the pixels: p_yes = mean(candidate RGB) / 255 (pairwise:
0.5 + (mean(candidate) - mean(reference)) / 510), so identical pixels give identical scores.
"""
from __future__ import annotations

import io
import threading
import time
from concurrent import futures
from typing import Callable, List, Optional

import grpc
import numpy as np

from rewarddance.v1 import reward_pb2 as pb
from rewarddance.v1 import reward_pb2_grpc as pb_grpc


def decode(img: pb.Image) -> np.ndarray:
    which = img.WhichOneof("source")
    if which == "rgb8":
        r = img.rgb8
        if r.width == 0 or r.height == 0 or len(r.data) != r.width * r.height * 3:
            raise ValueError("raw length mismatch")
        return np.frombuffer(r.data, np.uint8).reshape(r.height, r.width, 3)
    if which == "encoded":
        from PIL import Image

        im = Image.open(io.BytesIO(img.encoded))
        im.load()
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        return np.asarray(im.convert("RGB"))
    raise ValueError("image has no source")


class FakeRewardService(pb_grpc.RewardServiceServicer):
    def __init__(self, max_items_per_request: int = 16):
        self.max_items = max_items_per_request
        self.lock = threading.Lock()
        self.calls: List[int] = []  # items per Score call, in arrival order (failed ones too)
        self.metadata: List[dict] = []
        # fail_next: list of grpc.StatusCode to answer the next calls with, in order.
        self.fail_next: List[grpc.StatusCode] = []
        # delay(request) -> seconds to sleep before answering.
        self.delay: Optional[Callable[[pb.ScoreRequest], float]] = None

    def Score(self, request, context):
        with self.lock:
            self.calls.append(len(request.items))
            self.metadata.append(dict(context.invocation_metadata()))
            fail = self.fail_next.pop(0) if self.fail_next else None
        if fail is not None:
            context.abort(fail, f"injected {fail.name}")
        if not request.items or len(request.items) > self.max_items:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.items)} items")
        if self.delay is not None:
            time.sleep(self.delay(request))
        out = pb.ScoreResponse(model_id="fake")
        for i, item in enumerate(request.items):
            r = out.results.add(id=item.id, index=i)
            try:
                if not item.prompt:
                    raise ValueError("empty prompt")
                if item.WhichOneof("candidate") == "image":
                    cand = decode(item.image).astype(np.float64).mean()
                else:
                    if not item.video.frames:
                        raise ValueError("empty video")
                    cand = np.mean([decode(f).astype(np.float64).mean() for f in item.video.frames])
                if item.HasField("reference"):
                    p = 0.5 + (cand - decode(item.reference).astype(np.float64).mean()) / 510.0
                else:
                    p = cand / 255.0
                r.score.p_yes = p
                r.score.p_yes_vocab = p / 2
            except Exception as e:  # noqa: BLE001 - every bad item is its own error
                r.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                r.error.reason = "invalid_image"
                r.error.message = str(e)
        return out

    def Info(self, request, context):
        return pb.InfoResponse(model_id="fake", server_version="0",
                               limits=pb.Limits(max_items_per_request=self.max_items,
                                                max_message_bytes=64 << 20))


def _health_handler():
    def check(request: bytes, context) -> bytes:
        return b"\x08\x01"  # status: SERVING

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {"Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=None, response_serializer=None)},
    )


class FakeServer:
    def __init__(self, service: Optional[FakeRewardService] = None, port: int = 0):
        self.service = service or FakeRewardService()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_RewardServiceServicer_to_server(self.service, self.server)
        self.server.add_generic_rpc_handlers((_health_handler(),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def stop(self):
        self.server.stop(grace=None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
