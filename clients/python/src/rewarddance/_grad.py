"""The ScoreGrad side of the clients: float candidates packed as `FloatImage`s (raw little-endian
f32 or bf16, never PNG), the request, and the gradients unpacked into the caller's own kind of
array (torch tensor on the input's device and dtype, or numpy array), stacked like the input.

Conventions (docs/python-client.md, "Gradients of the reward (ScoreGrad, ReFL)"):
- `images` is one 4-D batch: a torch tensor, by default (B, 3, H, W) with values in [-1, 1]
  (what a VAE decoder gives), or a numpy array, by default (B, H, W, 3) in [0, 1]; `layout=`
  ("chw" / "hwc") and `value_range=` ("-1,1" / "0,1") override the defaults, which depend on
  the input's kind only, never on its values;
- torch bf16 is sent as bf16; every other float dtype (numpy has no bf16) as f32;
- the gradient is d objective / d (the values sent): same shape and layout as the input, in the
  input's dtype (float32 with `f32_gradients=True`), zeros where the item failed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _assembly, _core, _images
from ._types import ItemErrorInfo, ScoreGradResult
from .v1 import reward_pb2 as pb

OBJECTIVES = {"p_yes": pb.OBJECTIVE_P_YES, "log_p_yes": pb.OBJECTIVE_LOG_P_YES,
              "logit_margin": pb.OBJECTIVE_LOGIT_MARGIN}
RANGES = {"0,1": pb.PIXEL_RANGE_UNIT, "-1,1": pb.PIXEL_RANGE_SIGNED}
LAYOUTS = {"chw": pb.PIXEL_LAYOUT_CHW, "hwc": pb.PIXEL_LAYOUT_HWC}
#: The defaults of `layout=` and `value_range=` per kind of input (the one source of both).
DEFAULT_LAYOUT = {"torch": "chw", "numpy": "hwc"}
DEFAULT_RANGE = {"torch": "-1,1", "numpy": "0,1"}
_DTYPE_BYTES = {pb.PIXEL_DTYPE_F32: 4, pb.PIXEL_DTYPE_BF16: 2}


def request_budget(info: Optional[pb.InfoResponse], max_bytes: int, response_factor: Optional[int]) -> int:
    """Bytes one request may have. None: the answers are small (Score): the server's
    `max_message_bytes` (`max_bytes`). Otherwise (ScoreGrad) answers are about `response_factor`
    times their request's size, and requests and answers must both fit the server's
    `max_grad_message_bytes` (`max_bytes` when it reports none, or without Info) and the answers
    the client's receive cap."""
    if response_factor is None:
        return max_bytes
    limit = (info.limits.max_grad_message_bytes if info is not None else 0) or max_bytes
    factor = max(1, response_factor)
    return min(limit // factor, _core.CHANNEL_MAX_RECEIVE // factor)


def parse_objective(objective: Any) -> Tuple[str, int]:
    """("p_yes" | "log_p_yes" | "logit_margin", its `Objective` number)."""
    if isinstance(objective, str) and objective.strip().lower() in OBJECTIVES:
        name = objective.strip().lower()
        return name, OBJECTIVES[name]
    for name, num in OBJECTIVES.items():
        if not isinstance(objective, (str, bool)) and objective == num:
            return name, num
    raise ValueError(f"unknown objective {objective!r}: expected one of {', '.join(OBJECTIVES)}")


def parse_value_range(value_range: Any, kind: str) -> Tuple[str, int]:
    """("0,1" | "-1,1", its `PixelRange` number): a string "-1,1" / "0,1", a pair (-1, 1) /
    (0, 1), or None for the kind's default."""
    if value_range is None:
        value_range = DEFAULT_RANGE[kind]
    if isinstance(value_range, str):
        key = value_range.replace(" ", "").strip("[]()")
    else:
        try:
            lo, hi = (float(v) for v in value_range)
            key = f"{lo:g},{hi:g}"
        except (TypeError, ValueError):
            key = None
    if key not in RANGES:
        raise ValueError(f"value_range {value_range!r}: ScoreGrad takes '0,1' or '-1,1'")
    return key, RANGES[key]


def parse_layout(layout: Any, kind: str) -> Tuple[str, int]:
    """("chw" | "hwc", its `PixelLayout` number); None for the kind's default."""
    key = DEFAULT_LAYOUT[kind] if layout is None else str(layout).strip().lower()
    if key not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected 'chw' or 'hwc'")
    return key, LAYOUTS[key]


class FloatBatch:
    """One 4-D float batch as ScoreGrad sends it: per item a `FloatImage` (or why it cannot be
    one), and the way back: gradients stacked into the input's kind, device, dtype and layout."""

    def __init__(self, images: Any, layout: Any = None, value_range: Any = None, f32_gradients: bool = False):
        if _images.is_torch_tensor(images):
            self.kind = "torch"
        elif isinstance(images, np.ndarray):
            self.kind = "numpy"
        else:
            raise TypeError(f"images is {type(images).__module__}.{type(images).__qualname__}: ScoreGrad takes "
                            "one 4-D batch, a torch tensor (B, 3, H, W) or a numpy array (B, H, W, 3)")
        self.layout, self.layout_num = parse_layout(layout, self.kind)
        self.range, self.range_num = parse_value_range(value_range, self.kind)
        shape = tuple(images.shape)
        if len(shape) != 4:
            raise ValueError(f"images has shape {shape}: ScoreGrad takes one 4-D batch")
        channels = shape[1] if self.layout == "chw" else shape[3]
        if channels != 3:
            other = "hwc" if self.layout == "chw" else "chw"
            raise ValueError(f"images has shape {shape}: with layout={self.layout!r} the channel axis "
                             f"({1 if self.layout == 'chw' else 3}) must be 3 (RGB); layout={other!r}?")
        self.shape = shape
        self.n = shape[0]
        self.height, self.width = (shape[2], shape[3]) if self.layout == "chw" else (shape[1], shape[2])
        if self.n == 0 or self.height == 0 or self.width == 0:
            raise ValueError(f"images has shape {shape}: nothing to score")
        self.f32_gradients = bool(f32_gradients)
        if self.kind == "torch":
            self._init_torch(images)
        else:
            self._init_numpy(images)

    def _init_torch(self, images: Any) -> None:
        import torch  # the caller has it loaded already

        if not images.is_floating_point():
            raise ValueError(f"images has dtype {images.dtype}: ScoreGrad takes float pixels")
        self.dtype, self.device = images.dtype, images.device
        x = images.detach()
        self.finite = torch.isfinite(x).reshape(self.n, -1).all(dim=1).cpu().tolist()
        if x.dtype == torch.bfloat16:
            self.wire = pb.PIXEL_DTYPE_BF16
            bits = x.contiguous().cpu().view(torch.int16).numpy()
            self._data = bits.view(np.uint16).astype("<u2", copy=False)
        else:
            self.wire = pb.PIXEL_DTYPE_F32
            self._data = x.to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)

    def _init_numpy(self, images: np.ndarray) -> None:
        self.dtype, self.device = images.dtype, None
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"images has dtype {images.dtype}: ScoreGrad takes float pixels")
        self.wire = pb.PIXEL_DTYPE_F32
        self._data = np.ascontiguousarray(images, dtype="<f4")
        self.finite = list(np.isfinite(self._data).reshape(self.n, -1).all(axis=1))

    def message(self, i: int) -> pb.Image:
        """Item i's candidate; raises ImageConversionError for non-finite values."""
        if not self.finite[i]:
            raise _images.ImageConversionError("float pixels contain NaN or infinity")
        return pb.Image(float=pb.FloatImage(width=self.width, height=self.height, layout=self.layout_num,
                                            dtype=self.wire, range=self.range_num, data=self._data[i].tobytes()))

    @property
    def grad_wire(self) -> int:
        """The dtype the server answers gradients in."""
        return pb.PIXEL_DTYPE_F32 if self.f32_gradients else self.wire

    @property
    def response_factor(self) -> int:
        """Response bytes per request byte of candidate data (bf16 in, f32 gradients out: 2)."""
        return 2 if self.grad_wire == pb.PIXEL_DTYPE_F32 and self.wire == pb.PIXEL_DTYPE_BF16 else 1

    def decode(self, g: pb.FloatImage) -> np.ndarray:
        """One item's gradient as float32 in the input's item shape; ValueError when it does not
        match what was sent (size, layout, range; f32 or bf16 data of the right length)."""
        if (g.width, g.height) != (self.width, self.height):
            raise ValueError(f"gradient is {g.width}x{g.height}, the image {self.width}x{self.height}")
        if g.layout != self.layout_num:
            raise ValueError(f"gradient layout {pb.PixelLayout.Name(g.layout)}, sent {self.layout.upper()}")
        if (g.range or pb.PIXEL_RANGE_UNIT) != self.range_num:
            raise ValueError(f"gradient range {pb.PixelRange.Name(g.range)}, sent [{self.range}]")
        dtype = g.dtype or pb.PIXEL_DTYPE_F32
        want = self.width * self.height * 3 * _DTYPE_BYTES.get(dtype, 0)
        if not want or len(g.data) != want:
            raise ValueError(f"gradient has {len(g.data)} bytes of {pb.PixelDtype.Name(dtype)}, "
                             f"expected {self.width * self.height * 3} elements")
        if dtype == pb.PIXEL_DTYPE_BF16:
            arr = (np.frombuffer(g.data, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(g.data, "<f4").astype(np.float32)
        return arr.reshape(self.shape[1:])

    def stack(self, grads: Sequence[Optional[np.ndarray]]) -> Any:
        """The per-item gradients (None: failed, zeros) as one batch like the input."""
        out = np.zeros(self.shape, np.float32)
        for i, g in enumerate(grads):
            if g is not None:
                out[i] = g
        if self.kind == "torch":
            import torch

            dtype = torch.float32 if self.f32_gradients else self.dtype
            return torch.from_numpy(out).to(device=self.device, dtype=dtype)
        return out if self.f32_gradients else out.astype(self.dtype)


@dataclass
class GradPrepared(_core.Prepared):
    """`Prepared` items of a ScoreGrad call, and the batch their candidates came from."""

    batch: Optional[FloatBatch] = None
    objective: str = "p_yes"
    objective_num: int = pb.OBJECTIVE_P_YES
    reward: Optional[str] = None

    def request(self, items: List[pb.ScoreItem]) -> pb.ScoreGradRequest:
        assert self.batch is not None
        return pb.ScoreGradRequest(items=items, objective=self.objective_num,
                                   f32_gradients=self.batch.f32_gradients)


def prepare_grad(prompts: Any, images: Any, references: Any = None, *, objective: Any = "p_yes",
                 instructions: Any = None, mode: Any = None, value_range: Any = None, layout: Any = None,
                 f32_gradients: bool = False, reward: Any = None,
                 raw_max_bytes: int = _images.DEFAULT_RAW_MAX_BYTES) -> GradPrepared:
    """The ScoreGrad items of a call: float candidates from `images` (one 4-D batch), references
    converted as `score()` converts them (constants), each item naming `reward` (at most one;
    None: none named, the server's first). Bad arguments raise; an item whose candidate has
    NaN/inf values or whose reference cannot be converted is a client error."""
    name, num = parse_objective(objective)
    reward_name = _core.parse_one_reward(reward, "ScoreGrad")
    batch = FloatBatch(images, layout, value_range, f32_gradients)
    n = batch.n
    fields = _core.ItemFields(prompts, references, instructions, mode, n, [reward_name] if reward_name else [])
    convert = _core.ImageCache(raw_max_bytes, None)
    items: List[Optional[pb.ScoreItem]] = []
    errors: List[Optional[ItemErrorInfo]] = []
    for i in range(n):
        item = fields.item(i)
        try:
            item.image.CopyFrom(batch.message(i))
            fields.add_reference(item, i, convert)
        except _images.ImageConversionError as e:
            items.append(None)
            errors.append(_core.client_error(e))
            continue
        items.append(item)
        errors.append(None)
    return GradPrepared(n, items, errors, batch=batch, objective=name, objective_num=num, reward=reward_name)


class GradAssembler(_assembly.Assembler):
    """Collects `ScoreGradResponse`s into a `ScoreGradResult` in input order."""

    def __init__(self, prepared: GradPrepared):
        super().__init__(prepared)
        assert prepared.batch is not None
        self.batch = prepared.batch
        self.objective = prepared.objective
        self.reward = prepared.reward
        self.objectives = np.full(self.n, np.nan)
        self.grads: List[Optional[np.ndarray]] = [None] * self.n

    def extra(self, i: int, r: Any, scored: bool) -> None:
        if not scored:
            return
        try:
            if len(r.gradients) != 1:
                raise ValueError(f"{len(r.gradients)} gradients for one image")
            self.grads[i] = self.batch.decode(r.gradients[0])
        except ValueError as e:
            self.ok[i] = False
            self.scores[i] = self.logit_yes[i] = self.logit_no[i] = self.p_yes_vocab[i] = np.nan
            self.errors[i] = _assembly.bad_response(f"bad gradient: {e}")
            return
        self.objectives[i] = r.objective

    def result(self) -> ScoreGradResult:  # type: ignore[override]
        return ScoreGradResult(scores=self.scores, objectives=self.objectives, gradients=self.batch.stack(self.grads),
                               ok_mask=self.ok, errors=self.errors, objective=self.objective,
                               logit_yes=self.logit_yes, logit_no=self.logit_no, model_id=self.model_id,
                               timings=self.timings, reward=self.reward)
