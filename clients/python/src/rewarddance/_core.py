"""Transport-independent parts of the clients: targets and channel options, building items from
trainer inputs, chunking, and putting results back in input order (retries: `_retry`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from . import _images
from ._types import RATIONALE_STOPS, ItemErrorInfo, RankResult, RationaleOptions, RationaleResult
from .v1 import reward_pb2 as pb

DEFAULT_CHUNK_SIZE = 32
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Generous client-side caps: the server enforces its own `Limits.max_message_bytes`.
CHANNEL_MAX_SEND = 1024 * 1024 * 1024
CHANNEL_MAX_RECEIVE = 256 * 1024 * 1024
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

Targets = Union[str, Sequence[str]]


# ---------------------------------------------------------------------------------------------
# Targets and channels
# ---------------------------------------------------------------------------------------------

def normalize_targets(targets: Targets) -> List[str]:
    """One address, a comma-separated list of `host:port`, or a sequence of targets.

    Each target is any grpc target string: `host:port`, `dns:///svc.ns.svc.cluster.local:50051`
    (every A record of a Kubernetes headless service, balanced round robin by grpc),
    `ipv4:10.0.0.1:50051,10.0.0.2:50051`, `unix:/path`. A string with a scheme is never split.
    """
    if isinstance(targets, str):
        s = targets.strip()
        if ":/" in s or s.split(":", 1)[0] in ("ipv4", "ipv6", "unix", "unix-abstract", "vsock"):
            out = [s]
        else:
            out = [t.strip() for t in s.split(",") if t.strip()]
    else:
        out = [str(t).strip() for t in targets]
    if not out or any(not t for t in out):
        raise ValueError(f"no server address in {targets!r}")
    return out


def channel_options(lb_policy: str = "round_robin", extra: Optional[Sequence[Tuple[str, Any]]] = None):
    service_config = {"loadBalancingConfig": [{lb_policy: {}}]}
    opts: Dict[str, Any] = {
        "grpc.max_send_message_length": CHANNEL_MAX_SEND,
        "grpc.max_receive_message_length": CHANNEL_MAX_RECEIVE,
        "grpc.service_config": json.dumps(service_config),
        # The client does its own retries (retryable codes only, bounded by the call's timeout).
        "grpc.enable_retries": 0,
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 0,
        # Reconnect to a restarted server quickly instead of after grpc's default backoff (1 s,
        # growing to 120 s): at most 2 s, like the retries' own backoff cap.
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.max_reconnect_backoff_ms": 2_000,
    }
    for k, v in extra or ():
        opts[k] = v
    return list(opts.items())


def call_metadata(token: Optional[str], metadata: Optional[Sequence[Tuple[str, str]]]):
    md = list(metadata or ())
    if token:
        md.append(("authorization", f"Bearer {token}"))
    return tuple(md) or None


# ---------------------------------------------------------------------------------------------
# Building items
# ---------------------------------------------------------------------------------------------

def parse_mode(mode: Any) -> int:
    if mode is None:
        return pb.MODE_UNSPECIFIED
    if isinstance(mode, str):
        m = mode.strip().lower()
        table = {"": pb.MODE_UNSPECIFIED, "auto": pb.MODE_UNSPECIFIED, "unspecified": pb.MODE_UNSPECIFIED,
                 "pointwise": pb.MODE_POINTWISE, "pairwise": pb.MODE_PAIRWISE}
        if m not in table:
            raise ValueError(f"unknown mode {mode!r}: expected 'pointwise' or 'pairwise'")
        return table[m]
    m = int(mode)
    if m not in (pb.MODE_UNSPECIFIED, pb.MODE_POINTWISE, pb.MODE_PAIRWISE):
        raise ValueError(f"unknown mode {mode!r}")
    return m


def parse_reward(reward: Any) -> Tuple[List[str], bool]:
    """`reward=` of a scoring call: None (no name sent: the server's first reward), one name, or
    a list/tuple of names (one result column each). Returns (names, several). What is cheap is
    checked here (types, empty and repeated names: ValueError); whether a name exists is the
    server's to say (an item error, reason "unknown_reward")."""
    if reward is None:
        return [], False
    if isinstance(reward, str):
        names, several = [reward], False
    elif isinstance(reward, (list, tuple)):
        names, several = list(reward), True
    else:
        raise TypeError(f"reward is {type(reward).__name__}: expected a reward name (str) or a list of names")
    if not names:
        raise ValueError("reward=[] names no reward: pass None for the server's first reward")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"reward name {name!r} is {type(name).__name__}, expected str")
        if not name:
            raise ValueError("reward names are non-empty (reward=None: the server's first reward)")
    twice = [name for k, name in enumerate(names) if name in names[:k]]
    if twice:
        raise ValueError(f"reward {twice[0]!r} is named twice: each reward at most once")
    return names, several


def parse_one_reward(reward: Any, what: str) -> Optional[str]:
    """`reward=` of a call that takes at most one reward (ScoreGrad, Rank): None, a name, or a
    list/tuple of one name."""
    names, _ = parse_reward(reward)
    if len(names) > 1:
        raise ValueError(f"{what} takes one reward, got {len(names)} ({', '.join(names)}): "
                         "make one call per reward")
    return names[0] if names else None


def _split_batch(x: Any) -> List[Any]:
    return [x[i] for i in range(x.shape[0])]


def _image_list(x: Any, name: str) -> List[Any]:
    """Images as a list: a list/tuple, a 4-D batch array/tensor, or one image."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if _images.is_batch_array(x):
        return _split_batch(x)
    return [x]


def _per_item(x: Any, n: int, name: str, *, image: bool = False) -> List[Any]:
    """A per-item argument: None, one value for every item, or a sequence of exactly n."""
    if x is None:
        return [None] * n
    if isinstance(x, (list, tuple)) or (image and _images.is_batch_array(x)):
        xs = _image_list(x, name)
        if len(xs) != n:
            raise ValueError(f"{name} has {len(xs)} entries for {n} items")
        return xs
    if isinstance(x, np.ndarray) and not image:
        xs = list(x)
        if len(xs) != n:
            raise ValueError(f"{name} has {len(xs)} entries for {n} items")
        return xs
    return [x] * n


_RATIONALE_KEYS = ("max_tokens", "temperature", "top_p", "seed")


def parse_rationale(x: Any) -> Optional[RationaleOptions]:
    """One item's `rationale=`: None/False (no rationale), True (server defaults), a
    `RationaleOptions`, a dict of its fields, or a `rewarddance.v1.RationaleOptions` message."""
    if x is None or x is False:
        return None
    if x is True:
        return RationaleOptions()
    if isinstance(x, RationaleOptions):
        return x
    if isinstance(x, pb.RationaleOptions):
        return RationaleOptions(max_tokens=x.max_tokens, temperature=x.temperature, top_p=x.top_p or 1.0,
                                seed=x.seed)
    if isinstance(x, Mapping):
        unknown = sorted(str(k) for k in x if k not in _RATIONALE_KEYS)
        if unknown:
            raise ValueError(f"unknown rationale option(s) {', '.join(unknown)}: expected {', '.join(_RATIONALE_KEYS)}")
        return RationaleOptions(**x)
    raise TypeError(f"rationale is {type(x).__name__}: expected True, a RationaleOptions or a dict of "
                    f"{', '.join(_RATIONALE_KEYS)}")


def rationale_list(rationale: Any, n: int) -> List[Optional[RationaleOptions]]:
    """`rationale=` for n items: one setting for every item, or a list/tuple of exactly n."""
    if isinstance(rationale, (list, tuple)):
        if len(rationale) != n:
            raise ValueError(f"rationale has {len(rationale)} entries for {n} items")
        return [parse_rationale(r) for r in rationale]
    one = parse_rationale(rationale)
    return [one] * n


def check_rationale(rationale: Any) -> None:
    """Raises ValueError/TypeError for a bad `rationale=` (before any item is converted)."""
    for r in rationale if isinstance(rationale, (list, tuple)) else (rationale,):
        parse_rationale(r)


def rationale_message(opts: RationaleOptions, stream: bool) -> pb.RationaleOptions:
    return pb.RationaleOptions(max_tokens=opts.max_tokens, temperature=opts.temperature, top_p=opts.top_p,
                               seed=opts.seed, stream=stream)


def rationale_result(r: pb.Rationale) -> RationaleResult:
    return RationaleResult(text=r.text, token_ids=tuple(r.token_ids), stop=RATIONALE_STOPS.get(r.stop, str(r.stop)))


@dataclass
class Prepared:
    n: int
    items: List[Optional[pb.ScoreItem]]  # None where the client could not build the item
    errors: List[Optional[ItemErrorInfo]]


def prepare(
    prompts: Any,
    images: Any = None,
    references: Any = None,
    *,
    videos: Any = None,
    instructions: Any = None,
    mode: Any = None,
    raw_max_bytes: int = _images.DEFAULT_RAW_MAX_BYTES,
    value_range: Any = None,
    rationale: Any = None,
    stream_rationale: bool = False,
    rewards: Sequence[str] = (),
) -> Prepared:
    """The items of a Score / ScoreStream call; `rewards`: the names every item is scored with
    (checked by `parse_reward`; empty: none sent)."""
    check_rationale(rationale)
    if (images is None) == (videos is None):
        raise ValueError("pass exactly one of images= or videos=")
    if value_range is not None:
        value_range = (float(value_range[0]), float(value_range[1]))
    cand_range = value_range
    if images is not None:
        if value_range is None and _images.is_torch_tensor(images) and images.dim() == 4 \
                and images.is_floating_point() and images.numel():
            # One [-1, 1] vs [0, 1] decision for the whole batch: a bright image of a [-1, 1]
            # batch may have no negative value of its own.
            cand_range = (-1.0, 1.0) if float(images.min()) < 0.0 else (0.0, 1.0)
        cands = _image_list(images, "images")
        kind = "image"
    else:
        if _images.is_batch_array(videos):
            raise ValueError("videos= takes a list of videos (each a list of frames or a 4-D array)")
        cands = list(videos)
        kind = "video"
    n = len(cands)
    if n == 0:
        raise ValueError("nothing to score: no images or videos")
    fields = ItemFields(prompts, references, instructions, mode, n, rewards)
    rationales = rationale_list(rationale, n)
    convert = ImageCache(raw_max_bytes, value_range)
    items: List[Optional[pb.ScoreItem]] = []
    errors: List[Optional[ItemErrorInfo]] = []
    for i in range(n):
        item = fields.item(i)
        if rationales[i] is not None:
            item.rationale.CopyFrom(rationale_message(rationales[i], stream_rationale))
        try:
            if kind == "image":
                item.image.CopyFrom(convert(cands[i], cand_range))
            else:
                frames = cands[i]
                frames = _split_batch(frames) if _images.is_batch_array(frames) else list(frames)
                item.video.SetInParent()
                for f in frames:
                    item.video.frames.add().CopyFrom(convert(f))
            fields.add_reference(item, i, convert)
        except _images.ImageConversionError as e:
            items.append(None)
            errors.append(client_error(e))
            continue
        items.append(item)
        errors.append(None)
    return Prepared(n, items, errors)


def client_error(e: Exception) -> ItemErrorInfo:
    """The item error of an input the client could not turn into an item."""
    return ItemErrorInfo(INVALID_ARGUMENT, "client_invalid_input", str(e))


class ItemFields:
    """The per-item arguments every scoring call shares (prompts, references, instructions,
    modes, the reward names), spread over n items, and the `ScoreItem` they make (id = input
    position)."""

    def __init__(self, prompts: Any, references: Any, instructions: Any, mode: Any, n: int,
                 rewards: Sequence[str] = ()):
        self.prompts = [prompts] * n if isinstance(prompts, str) else _per_item(prompts, n, "prompts")
        self.references = _per_item(references, n, "references", image=True)
        self.instructions = _per_item(instructions, n, "instructions")
        modes = _per_item(mode, n, "mode") if isinstance(mode, (list, tuple)) else [mode] * n
        self.modes = [parse_mode(m) for m in modes]
        self.rewards = list(rewards)

    def item(self, i: int) -> pb.ScoreItem:
        prompt = self.prompts[i]
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] is {type(prompt).__name__}, expected str")
        item = pb.ScoreItem(id=str(i), prompt=prompt, mode=self.modes[i], rewards=self.rewards)
        if self.instructions[i] is not None:
            item.instruction = self.instructions[i]
        return item

    def add_reference(self, item: pb.ScoreItem, i: int, convert: "ImageCache") -> None:
        """Sets item i's reference image, if it has one (ImageConversionError if it is bad)."""
        if self.references[i] is not None:
            item.reference.CopyFrom(convert(self.references[i]))


_SAME_RANGE = object()  # ImageCache's default: the cache's own value range


class ImageCache:
    """`to_image_message` with a cache by object identity, so that one reference shared by a
    whole group is converted once (a bad one fails every item that uses it, with one error).
    The cache holds the objects too, so that their ids stay theirs while it lives."""

    def __init__(self, raw_max_bytes: int, value_range: Any):
        self.raw_max_bytes = raw_max_bytes
        self.value_range = value_range
        self._cache: Dict[int, Any] = {}  # id(obj) -> (obj, Image or exception)

    def __call__(self, x: Any, vrange: Any = _SAME_RANGE) -> pb.Image:
        key = id(x)
        if key in self._cache:
            hit = self._cache[key][1]
            if isinstance(hit, Exception):
                raise hit
            return hit
        vr = self.value_range if vrange is _SAME_RANGE else vrange
        try:
            msg = _images.to_image_message(x, raw_max_bytes=self.raw_max_bytes, value_range=vr)
        except _images.ImageConversionError as e:
            self._cache[key] = (x, e)
            raise
        self._cache[key] = (x, msg)
        return msg


def parse_rank_method(method: Any) -> int:
    if method is None:
        return pb.RANK_METHOD_UNSPECIFIED
    if isinstance(method, str):
        table = {"": pb.RANK_METHOD_UNSPECIFIED, "pairwise": pb.RANK_METHOD_PAIRWISE,
                 "pointwise": pb.RANK_METHOD_POINTWISE}
        m = method.strip().lower()
        if m not in table:
            raise ValueError(f"unknown rank method {method!r}: expected 'pairwise' or 'pointwise'")
        return table[m]
    return int(method)


def rank_request(prompt: str, candidates: Any, *, instruction: Optional[str] = None, method: Any = None,
                 opponents: int = 0, seed: int = 0, raw_max_bytes: int = _images.DEFAULT_RAW_MAX_BYTES,
                 value_range: Any = None,
                 reward: Optional[str] = None) -> Tuple[pb.RankRequest, List[Optional[ItemErrorInfo]]]:
    """A RankRequest and the client-side conversion errors. A candidate the client cannot
    convert is sent as an empty Image, so that indices stay aligned and the server reports it
    as that candidate's own error; the client's error replaces the server's in the result.
    `reward`: the name to rank by (checked by `parse_one_reward`), None: the server's first."""
    cands = _image_list(candidates, "candidates")
    req = pb.RankRequest(prompt=prompt, method=parse_rank_method(method), opponents=int(opponents),
                         seed=int(seed), reward=reward or "")
    if instruction is not None:
        req.instruction = instruction
    errors: List[Optional[ItemErrorInfo]] = []
    for c in cands:
        try:
            img = _images.to_image_message(c, raw_max_bytes=raw_max_bytes, value_range=value_range)
        except _images.ImageConversionError as e:
            req.candidates.add()
            errors.append(client_error(e))
            continue
        req.candidates.add().CopyFrom(img)
        errors.append(None)
    return req, errors


def rank_result(resp: pb.RankResponse, n: int, client_errors: List[Optional[ItemErrorInfo]],
                reward: Optional[str] = None) -> RankResult:
    nan = np.full(n, np.nan)
    wins, strength, p_yes = nan.copy(), nan.copy(), nan.copy()
    ok = np.ones(n, dtype=bool)
    errors: List[Optional[ItemErrorInfo]] = [None] * n
    for pos, c in enumerate(resp.candidates):
        i = c.index if c.index < n else pos
        if c.HasField("error"):
            ok[i] = False
            errors[i] = client_errors[i] or ItemErrorInfo(c.error.code, c.error.reason, c.error.message)
            continue
        wins[i] = c.wins
        if c.HasField("strength"):
            strength[i] = c.strength
        if c.HasField("p_yes"):
            p_yes[i] = c.p_yes
    for i, e in enumerate(client_errors):
        if e is not None:
            ok[i], errors[i] = False, e
    if len(resp.candidates) != n:
        ok[:] = False
        errors = [ItemErrorInfo(grpc.StatusCode.INTERNAL.value[0], "bad_response",
                                f"server ranked {len(resp.candidates)} candidates of {n}")] * n
    preference = None
    if len(resp.preference) == n and n:
        preference = np.array([list(row.p) for row in resp.preference], dtype=np.float64)
    return RankResult(order=list(resp.order), best=resp.best if resp.HasField("best") else None, ok_mask=ok,
                      errors=errors, wins=wins, strength=strength, p_yes=p_yes, preference=preference,
                      comparisons=resp.comparisons, model_id=resp.model_id, reward=reward)


def make_chunks(items: Sequence[Optional[pb.ScoreItem]], chunk_size: int, max_bytes: int) -> List[List[int]]:
    """Indices of the buildable items, in order, grouped into requests of at most `chunk_size`
    items and (where possible) `max_bytes` serialized bytes."""
    chunk_size = max(1, int(chunk_size))
    budget = max(1, int(max_bytes * 0.95) - 64)
    chunks: List[List[int]] = []
    cur: List[int] = []
    cur_bytes = 0
    for i, item in enumerate(items):
        if item is None:
            continue
        size = item.ByteSize() + 8
        if cur and (len(cur) >= chunk_size or cur_bytes + size > budget):
            chunks.append(cur)
            cur, cur_bytes = [], 0
        cur.append(i)
        cur_bytes += size
    if cur:
        chunks.append(cur)
    return chunks


def limits_from_info(info: Optional[pb.InfoResponse], chunk_size: Optional[int]) -> Tuple[int, int]:
    lim = info.limits if info is not None else None
    size = chunk_size
    if not size:
        # A request larger than the server's whole queue could never be admitted (it would get
        # RESOURCE_EXHAUSTED forever), so the default is capped by the queue too.
        caps = [c for c in ((lim.max_items_per_request, lim.max_queue_items) if lim else ()) if c > 0]
        size = min(caps) if caps else DEFAULT_CHUNK_SIZE
    max_bytes = (lim.max_message_bytes if lim else 0) or DEFAULT_MAX_MESSAGE_BYTES
    return size, max_bytes


def spread(prep: "Prepared", limit: int, n_targets: int) -> int:
    """Default items per request: the server's limit, but with several targets the batch is
    split evenly so that every target gets a share (`ceil(items / targets)`)."""
    n = sum(1 for it in prep.items if it is not None)
    if n_targets <= 1 or n == 0:
        return limit
    return max(1, min(limit, -(-n // n_targets)))


# ---------------------------------------------------------------------------------------------
# Health (hand-encoded grpc.health.v1 messages: no grpcio-health-checking dependency, whose
# releases pin protobuf to their own version)
# ---------------------------------------------------------------------------------------------

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_health_request(service: str) -> bytes:
    s = service.encode()
    return b"\x0a" + _varint(len(s)) + s if s else b""


def decode_health_response(data: bytes) -> str:
    """HealthCheckResponse.status (field 1, enum) as its name."""
    i, status = 0, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        fnum, wtype = key >> 3, key & 7
        if wtype == 0:
            v, i = _read_varint(data, i)
            if fnum == 1:
                status = v
        elif wtype == 2:
            ln, i = _read_varint(data, i)
            i += ln
        elif wtype == 1:
            i += 8
        elif wtype == 5:
            i += 4
        else:
            break
    return HEALTH_STATUS.get(status, str(status))


def _read_varint(data: bytes, i: int) -> Tuple[int, int]:
    shift = result = 0
    while True:
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
