"""A tiny in-process RewardService for tests that need control over failures (retries,
deadlines, ordering) or must run without the real server.

Scores are a deterministic function of the pixels: p_yes = mean(candidate RGB) / 255 (pairwise:
0.5 + (mean(candidate) - mean(reference)) / 510), so identical pixels give identical scores.

Rationales: an item that asks for one gets `max_tokens` tokens (4 when 0, then stopping at the end
of its turn): the answer ("yes" when p_yes >= 0.5, else "no"), then " t1", " t2", ...; token k has
id 100 + k. Options are checked like the real server's (temperature >= 0, top_p in [0, 1],
max_tokens <= 64). On ScoreStream, items with `rationale.stream` send one delta per token,
`token_delay` seconds apart, stopping when the call is cancelled.

ScoreGrad: a known analytic reward over the candidate's pixels u mapped to [0, 1] (CHW, float64),
z = sum(w * u) + b (`grad_logit`), p_yes = sigmoid(z); its gradient is exact for each objective
and scaled by 1/2 for [-1, 1] values (u = (x + 1) / 2). Only float candidates are accepted (else
INVALID_ARGUMENT, as is a rationale); the answer has the input's size, layout and range, and its
dtype unless `f32_gradients`.

Named rewards (`rewards`, Info lists them; the first is what an item naming none gets): reward k
scores p_yes ** (k + 1) (reward 0: the plain score above; ScoreGrad: the logit shifted by
k * fake_grad.REWARD_OFFSET). An item naming rewards gets one `ItemResult.rewards` outcome per
name, in order, and the first one's as its own score/error; an unknown or repeated name fails
the item (INVALID_ARGUMENT, "unknown_reward") under every name, as the real server does.
`failing_rewards[name] = t`: under that reward, items whose plain p_yes is below t fail
(INTERNAL, "internal"): a per-cell error beside scored cells. `named_rewards = False` makes the
fake a server that predates them (names ignored, none listed, no per-reward outcomes). Rank is
pointwise only (by the named reward's p_yes; an unknown name fails the call).
"""
from __future__ import annotations

import io
import threading
import time
from concurrent import futures
from typing import Callable, Dict, List, Optional

import grpc
import numpy as np

from rewarddance.v1 import reward_pb2 as pb
from rewarddance.v1 import reward_pb2_grpc as pb_grpc

from fake_grad import score_grad_response


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


class _BadRationale(ValueError):
    pass


class FakeRewardService(pb_grpc.RewardServiceServicer):
    def __init__(self, max_items_per_request: int = 16):
        self.max_items = max_items_per_request
        self.max_message_bytes = 64 << 20  # what Info reports (neither is enforced)
        self.max_grad_message_bytes = 256 << 20
        self.lock = threading.Lock()
        self.calls: List[int] = []  # items per Score / ScoreGrad call, in arrival order (failed ones too)
        self.grad_requests: List[pb.ScoreGradRequest] = []  # every ScoreGrad request, as received
        self.metadata: List[dict] = []
        # fail_next: list of grpc.StatusCode to answer the next calls with, in order.
        self.fail_next: List[grpc.StatusCode] = []
        # delay(request) -> seconds to sleep before answering.
        self.delay: Optional[Callable[[pb.ScoreRequest], float]] = None
        self.token_delay = 0.0  # seconds between streamed rationale tokens
        self.tokens_streamed = 0  # rationale deltas sent on ScoreStream, all calls together
        self.stream_calls = 0
        # stream_abort: a code that ends every ScoreStream call right after its first delta.
        self.stream_abort: Optional[grpc.StatusCode] = None
        self.rewards: List[str] = ["default"]
        self.failing_rewards: Dict[str, float] = {}
        self.named_rewards = True
        self.score_requests: List[pb.ScoreRequest] = []  # every Score / ScoreStream request message
        self.rank_requests: List[pb.RankRequest] = []

    def _start(self, request, context):
        with self.lock:
            self.calls.append(len(request.items))
            self.metadata.append(dict(context.invocation_metadata()))
            fail = self.fail_next.pop(0) if self.fail_next else None
        if fail is not None:
            context.abort(fail, f"injected {fail.name}")

    def Score(self, request, context):
        self._start(request, context)
        if not request.items or len(request.items) > self.max_items:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.items)} items")
        if self.delay is not None:
            time.sleep(self.delay(request))
        return self._answer(request)[0]

    def ScoreGrad(self, request, context):
        with self.lock:
            self.grad_requests.append(request)
        self._start(request, context)
        if not request.items or len(request.items) > self.max_items:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{len(request.items)} items")
        if self.delay is not None:
            time.sleep(self.delay(request))
        return score_grad_response(request, decode, self.rewards if self.named_rewards else None)

    def ScoreStream(self, request_iterator, context):
        with self.lock:
            self.stream_calls += 1
        for k, request in enumerate(request_iterator):
            self._start(request, context)
            if self.delay is not None:
                time.sleep(self.delay(request))
            out, tokens = self._answer(request)
            for i, item in enumerate(request.items):
                if not (item.HasField("rationale") and item.rationale.stream) or i not in tokens:
                    continue
                for text in tokens[i]:
                    if not context.is_active():
                        return
                    if self.token_delay:
                        time.sleep(self.token_delay)
                    with self.lock:
                        self.tokens_streamed += 1
                    yield pb.ScoreResponse(model_id="fake", rationale_deltas=[
                        pb.RationaleDelta(request=k, index=i, id=item.id, text=text)])
                    if self.stream_abort is not None:
                        context.abort(self.stream_abort, f"injected {self.stream_abort.name} mid-stream")
            yield out

    def reward_index(self, name: str) -> int:
        """The index of a named reward; ValueError for one this fake does not have."""
        if name not in self.rewards:
            raise ValueError(f"unknown reward {name!r} (this server has {', '.join(self.rewards)})")
        return self.rewards.index(name)

    def _named_outcomes(self, item, r, p: float) -> bool:
        """Fills `r.rewards` (and r's own outcome: the first's) for an item naming rewards;
        False when the first reward did not score it."""
        names = list(item.rewards)
        try:
            ks = [self.reward_index(n) for n in names]
            if len(set(names)) != len(names):
                raise ValueError("a reward is named twice")
        except ValueError as e:
            err = pb.ItemError(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], reason="unknown_reward",
                               message=str(e))
            r.error.CopyFrom(err)
            for n in names:
                r.rewards.add(reward=n, error=err)
            return False
        for n, k in zip(names, ks):
            o = r.rewards.add(reward=n)
            if p < self.failing_rewards.get(n, -1.0):
                o.error.CopyFrom(pb.ItemError(code=grpc.StatusCode.INTERNAL.value[0], reason="internal",
                                              message=f"reward {n} failed"))
            else:
                o.score.p_yes = p ** (k + 1)
                o.score.p_yes_vocab = o.score.p_yes / 2
                o.score.logit_yes = float(k)
        first = r.rewards[0]
        if first.HasField("error"):
            r.error.CopyFrom(first.error)
            return False
        r.score.CopyFrom(first.score)
        return True

    def _answer(self, request):
        """The ScoreResponse, and the rationale tokens (text pieces) of items that asked for one."""
        with self.lock:
            self.score_requests.append(request)
        tokens = {}
        out = pb.ScoreResponse(model_id="fake")
        if not request.items or len(request.items) > self.max_items:
            for i, item in enumerate(request.items):
                out.results.add(id=item.id, index=i, error=pb.ItemError(
                    code=grpc.StatusCode.INVALID_ARGUMENT.value[0], reason="invalid_input", message="too many"))
            return out, tokens
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
                if item.HasField("rationale"):
                    o = item.rationale
                    if o.temperature < 0 or not 0 <= o.top_p <= 1 or o.max_tokens > 64:
                        raise _BadRationale(f"bad rationale options: max_tokens={o.max_tokens} "
                                            f"temperature={o.temperature} top_p={o.top_p}")
                    n = o.max_tokens or 4
                    pieces = ["yes" if p >= 0.5 else "no"] + [f" t{k}" for k in range(1, n)]
                    tokens[i] = pieces
                    r.rationale.text = "".join(pieces)
                    r.rationale.token_ids.extend(100 + k for k in range(n))
                    r.rationale.stop = pb.RATIONALE_STOP_MAX_TOKENS if o.max_tokens else pb.RATIONALE_STOP_END_OF_TURN
                    r.timing.decode_ms = 0.5 * n
                if self.named_rewards and item.rewards:
                    if not self._named_outcomes(item, r, p):
                        r.ClearField("rationale")
                        tokens.pop(i, None)
                    continue
                r.score.p_yes = p
                r.score.p_yes_vocab = p / 2
            except Exception as e:  # noqa: BLE001 - every bad item is its own error
                r.error.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                r.error.reason = "invalid_input" if isinstance(e, _BadRationale) else "invalid_image"
                r.error.message = str(e)
                r.ClearField("rationale")
                tokens.pop(i, None)
        return out, tokens

    def Info(self, request, context):
        info = pb.InfoResponse(model_id="fake", server_version="0",
                               limits=pb.Limits(max_items_per_request=self.max_items,
                                                max_message_bytes=self.max_message_bytes,
                                                max_grad_message_bytes=self.max_grad_message_bytes,
                                                max_rationale_tokens=64,
                                                default_rationale_tokens=4))
        if self.named_rewards:
            for k, name in enumerate(self.rewards):
                ri = info.rewards.add(name=name, answer_tokens=pb.AnswerTokens(yes="yes", no="no"))
                if k:  # every reward but the first has an (unmerged) adapter
                    ri.adapter.CopyFrom(pb.AdapterInfo(path=f"adapters/{name}", rank=8, alpha=16.0,
                                                       modules=["q_proj", "v_proj"]))
        return info

    def Rank(self, request, context):
        with self.lock:
            self.rank_requests.append(request)
        if len(request.candidates) < 2:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fewer than 2 candidates")
        if request.method != pb.RANK_METHOD_POINTWISE:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "the fake ranks pointwise only")
        try:
            k = self.reward_index(request.reward) if self.named_rewards and request.reward else 0
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        out = pb.RankResponse(model_id="fake", comparisons=len(request.candidates))
        ps = {}
        for i, c in enumerate(request.candidates):
            entry = out.candidates.add(index=i)
            try:
                ps[i] = (decode(c).astype(np.float64).mean() / 255.0) ** (k + 1)
                entry.p_yes = ps[i]
            except Exception as e:  # noqa: BLE001
                entry.error.CopyFrom(pb.ItemError(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                  reason="invalid_image", message=str(e)))
        order = sorted(ps, key=lambda i: -ps[i]) + [i for i in range(len(request.candidates)) if i not in ps]
        out.order.extend(order)
        if ps:
            out.best = order[0]
        return out


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
