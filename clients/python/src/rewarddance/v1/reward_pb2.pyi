from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_POINTWISE: _ClassVar[Mode]
    MODE_PAIRWISE: _ClassVar[Mode]

class PixelLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_LAYOUT_UNSPECIFIED: _ClassVar[PixelLayout]
    PIXEL_LAYOUT_CHW: _ClassVar[PixelLayout]
    PIXEL_LAYOUT_HWC: _ClassVar[PixelLayout]

class PixelDtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_DTYPE_UNSPECIFIED: _ClassVar[PixelDtype]
    PIXEL_DTYPE_F32: _ClassVar[PixelDtype]
    PIXEL_DTYPE_BF16: _ClassVar[PixelDtype]

class PixelRange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_RANGE_UNSPECIFIED: _ClassVar[PixelRange]
    PIXEL_RANGE_UNIT: _ClassVar[PixelRange]
    PIXEL_RANGE_SIGNED: _ClassVar[PixelRange]

class Objective(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBJECTIVE_UNSPECIFIED: _ClassVar[Objective]
    OBJECTIVE_P_YES: _ClassVar[Objective]
    OBJECTIVE_LOG_P_YES: _ClassVar[Objective]
    OBJECTIVE_LOGIT_MARGIN: _ClassVar[Objective]

class RationaleStop(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATIONALE_STOP_UNSPECIFIED: _ClassVar[RationaleStop]
    RATIONALE_STOP_END_OF_TURN: _ClassVar[RationaleStop]
    RATIONALE_STOP_MAX_TOKENS: _ClassVar[RationaleStop]
    RATIONALE_STOP_DEADLINE: _ClassVar[RationaleStop]
    RATIONALE_STOP_FAILED: _ClassVar[RationaleStop]

class RankMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_METHOD_UNSPECIFIED: _ClassVar[RankMethod]
    RANK_METHOD_PAIRWISE: _ClassVar[RankMethod]
    RANK_METHOD_POINTWISE: _ClassVar[RankMethod]
MODE_UNSPECIFIED: Mode
MODE_POINTWISE: Mode
MODE_PAIRWISE: Mode
PIXEL_LAYOUT_UNSPECIFIED: PixelLayout
PIXEL_LAYOUT_CHW: PixelLayout
PIXEL_LAYOUT_HWC: PixelLayout
PIXEL_DTYPE_UNSPECIFIED: PixelDtype
PIXEL_DTYPE_F32: PixelDtype
PIXEL_DTYPE_BF16: PixelDtype
PIXEL_RANGE_UNSPECIFIED: PixelRange
PIXEL_RANGE_UNIT: PixelRange
PIXEL_RANGE_SIGNED: PixelRange
OBJECTIVE_UNSPECIFIED: Objective
OBJECTIVE_P_YES: Objective
OBJECTIVE_LOG_P_YES: Objective
OBJECTIVE_LOGIT_MARGIN: Objective
RATIONALE_STOP_UNSPECIFIED: RationaleStop
RATIONALE_STOP_END_OF_TURN: RationaleStop
RATIONALE_STOP_MAX_TOKENS: RationaleStop
RATIONALE_STOP_DEADLINE: RationaleStop
RATIONALE_STOP_FAILED: RationaleStop
RANK_METHOD_UNSPECIFIED: RankMethod
RANK_METHOD_PAIRWISE: RankMethod
RANK_METHOD_POINTWISE: RankMethod

class ScoreRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ...) -> None: ...

class ScoreItem(_message.Message):
    __slots__ = ("id", "prompt", "image", "video", "reference", "instruction", "mode", "rationale", "rewards")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    image: Image
    video: Video
    reference: Image
    instruction: str
    mode: Mode
    rationale: RationaleOptions
    rewards: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., video: _Optional[_Union[Video, _Mapping]] = ..., reference: _Optional[_Union[Image, _Mapping]] = ..., instruction: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ..., rationale: _Optional[_Union[RationaleOptions, _Mapping]] = ..., rewards: _Optional[_Iterable[str]] = ...) -> None: ...

class RationaleOptions(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stream")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stream: bool = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "rgb8", "float")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RGB8_FIELD_NUMBER: _ClassVar[int]
    FLOAT_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    rgb8: RawImage
    float: FloatImage
    def __init__(self, encoded: _Optional[bytes] = ..., rgb8: _Optional[_Union[RawImage, _Mapping]] = ..., float: _Optional[_Union[FloatImage, _Mapping]] = ...) -> None: ...

class FloatImage(_message.Message):
    __slots__ = ("width", "height", "layout", "dtype", "range", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    layout: PixelLayout
    dtype: PixelDtype
    range: PixelRange
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., layout: _Optional[_Union[PixelLayout, str]] = ..., dtype: _Optional[_Union[PixelDtype, str]] = ..., range: _Optional[_Union[PixelRange, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("width", "height", "data")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    data: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, frames: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class ScoreGradRequest(_message.Message):
    __slots__ = ("items", "objective", "f32_gradients")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    F32_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    objective: Objective
    f32_gradients: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., objective: _Optional[_Union[Objective, str]] = ..., f32_gradients: bool = ...) -> None: ...

class ScoreGradResponse(_message.Message):
    __slots__ = ("results", "model_id", "timing")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GradResult]
    model_id: str
    timing: Timing
    def __init__(self, results: _Optional[_Iterable[_Union[GradResult, _Mapping]]] = ..., model_id: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class GradResult(_message.Message):
    __slots__ = ("id", "index", "score", "error", "objective", "gradients", "timing")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    score: Score
    error: ItemError
    objective: float
    gradients: _containers.RepeatedCompositeFieldContainer[FloatImage]
    timing: Timing
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[_Union[Score, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., objective: _Optional[float] = ..., gradients: _Optional[_Iterable[_Union[FloatImage, _Mapping]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "model_id", "timing", "rationale_deltas")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_DELTAS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    model_id: str
    timing: Timing
    rationale_deltas: _containers.RepeatedCompositeFieldContainer[RationaleDelta]
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., model_id: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., rationale_deltas: _Optional[_Iterable[_Union[RationaleDelta, _Mapping]]] = ...) -> None: ...

class RationaleDelta(_message.Message):
    __slots__ = ("request", "index", "id", "text")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    request: int
    index: int
    id: str
    text: str
    def __init__(self, request: _Optional[int] = ..., index: _Optional[int] = ..., id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("id", "index", "score", "error", "timing", "rationale", "rewards")
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    index: int
    score: Score
    error: ItemError
    timing: Timing
    rationale: Rationale
    rewards: _containers.RepeatedCompositeFieldContainer[RewardOutcome]
    def __init__(self, id: _Optional[str] = ..., index: _Optional[int] = ..., score: _Optional[_Union[Score, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., rationale: _Optional[_Union[Rationale, _Mapping]] = ..., rewards: _Optional[_Iterable[_Union[RewardOutcome, _Mapping]]] = ...) -> None: ...

class RewardOutcome(_message.Message):
    __slots__ = ("reward", "score", "error")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    reward: str
    score: Score
    error: ItemError
    def __init__(self, reward: _Optional[str] = ..., score: _Optional[_Union[Score, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class Rationale(_message.Message):
    __slots__ = ("text", "token_ids", "stop")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    stop: RationaleStop
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., stop: _Optional[_Union[RationaleStop, str]] = ...) -> None: ...

class Score(_message.Message):
    __slots__ = ("p_yes", "p_yes_vocab", "logit_yes", "logit_no")
    P_YES_FIELD_NUMBER: _ClassVar[int]
    P_YES_VOCAB_FIELD_NUMBER: _ClassVar[int]
    LOGIT_YES_FIELD_NUMBER: _ClassVar[int]
    LOGIT_NO_FIELD_NUMBER: _ClassVar[int]
    p_yes: float
    p_yes_vocab: float
    logit_yes: float
    logit_no: float
    def __init__(self, p_yes: _Optional[float] = ..., p_yes_vocab: _Optional[float] = ..., logit_yes: _Optional[float] = ..., logit_no: _Optional[float] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "preprocess_ms", "inference_ms", "total_ms", "batch_items", "batch_tokens", "decode_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    preprocess_ms: float
    inference_ms: float
    total_ms: float
    batch_items: int
    batch_tokens: int
    decode_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., preprocess_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_items: _Optional[int] = ..., batch_tokens: _Optional[int] = ..., decode_ms: _Optional[float] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("prompt", "candidates", "instruction", "method", "opponents", "seed", "reward")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OPPONENTS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    candidates: _containers.RepeatedCompositeFieldContainer[Image]
    instruction: str
    method: RankMethod
    opponents: int
    seed: int
    reward: str
    def __init__(self, prompt: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., instruction: _Optional[str] = ..., method: _Optional[_Union[RankMethod, str]] = ..., opponents: _Optional[int] = ..., seed: _Optional[int] = ..., reward: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("candidates", "order", "best", "preference", "comparisons", "model_id")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateRanking]
    order: _containers.RepeatedScalarFieldContainer[int]
    best: int
    preference: _containers.RepeatedCompositeFieldContainer[PreferenceRow]
    comparisons: int
    model_id: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[CandidateRanking, _Mapping]]] = ..., order: _Optional[_Iterable[int]] = ..., best: _Optional[int] = ..., preference: _Optional[_Iterable[_Union[PreferenceRow, _Mapping]]] = ..., comparisons: _Optional[int] = ..., model_id: _Optional[str] = ...) -> None: ...

class CandidateRanking(_message.Message):
    __slots__ = ("index", "error", "wins", "strength", "p_yes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WINS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    P_YES_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: ItemError
    wins: float
    strength: float
    p_yes: float
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., wins: _Optional[float] = ..., strength: _Optional[float] = ..., p_yes: _Optional[float] = ...) -> None: ...

class PreferenceRow(_message.Message):
    __slots__ = ("p",)
    P_FIELD_NUMBER: _ClassVar[int]
    p: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, p: _Optional[_Iterable[float]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("model_id", "layout", "dtype", "devices", "limits", "answer_tokens", "default_instructions", "server_version", "tile_size", "tokens_per_tile", "rewards")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_TILE_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layout: str
    dtype: str
    devices: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    answer_tokens: AnswerTokens
    default_instructions: _containers.RepeatedCompositeFieldContainer[DefaultInstruction]
    server_version: str
    tile_size: int
    tokens_per_tile: int
    rewards: _containers.RepeatedCompositeFieldContainer[RewardInfo]
    def __init__(self, model_id: _Optional[str] = ..., layout: _Optional[str] = ..., dtype: _Optional[str] = ..., devices: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., answer_tokens: _Optional[_Union[AnswerTokens, _Mapping]] = ..., default_instructions: _Optional[_Iterable[_Union[DefaultInstruction, _Mapping]]] = ..., server_version: _Optional[str] = ..., tile_size: _Optional[int] = ..., tokens_per_tile: _Optional[int] = ..., rewards: _Optional[_Iterable[_Union[RewardInfo, _Mapping]]] = ...) -> None: ...

class RewardInfo(_message.Message):
    __slots__ = ("name", "adapter", "answer_tokens", "instructions", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    adapter: AdapterInfo
    answer_tokens: AnswerTokens
    instructions: _containers.RepeatedCompositeFieldContainer[DefaultInstruction]
    mode: Mode
    def __init__(self, name: _Optional[str] = ..., adapter: _Optional[_Union[AdapterInfo, _Mapping]] = ..., answer_tokens: _Optional[_Union[AnswerTokens, _Mapping]] = ..., instructions: _Optional[_Iterable[_Union[DefaultInstruction, _Mapping]]] = ..., mode: _Optional[_Union[Mode, str]] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("path", "rank", "alpha", "rslora", "merged", "modules", "replaced")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    RSLORA_FIELD_NUMBER: _ClassVar[int]
    MERGED_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    path: str
    rank: int
    alpha: float
    rslora: bool
    merged: bool
    modules: _containers.RepeatedScalarFieldContainer[str]
    replaced: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[str] = ..., rank: _Optional[int] = ..., alpha: _Optional[float] = ..., rslora: bool = ..., merged: bool = ..., modules: _Optional[_Iterable[str]] = ..., replaced: _Optional[_Iterable[str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch_tokens", "max_batch_items", "max_items_per_request", "max_message_bytes", "max_image_pixels", "max_tiles_per_item", "max_tokens_per_item", "max_queue_items", "max_stream_in_flight", "max_rationale_tokens", "default_rationale_tokens", "max_decoding_sequences", "max_grad_message_bytes", "max_gradient_tiles")
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_TILES_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_ITEM_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_RATIONALE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_RATIONALE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_DECODING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_GRADIENT_TILES_FIELD_NUMBER: _ClassVar[int]
    max_batch_tokens: int
    max_batch_items: int
    max_items_per_request: int
    max_message_bytes: int
    max_image_pixels: int
    max_tiles_per_item: int
    max_tokens_per_item: int
    max_queue_items: int
    max_stream_in_flight: int
    max_rationale_tokens: int
    default_rationale_tokens: int
    max_decoding_sequences: int
    max_grad_message_bytes: int
    max_gradient_tiles: int
    def __init__(self, max_batch_tokens: _Optional[int] = ..., max_batch_items: _Optional[int] = ..., max_items_per_request: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_tiles_per_item: _Optional[int] = ..., max_tokens_per_item: _Optional[int] = ..., max_queue_items: _Optional[int] = ..., max_stream_in_flight: _Optional[int] = ..., max_rationale_tokens: _Optional[int] = ..., default_rationale_tokens: _Optional[int] = ..., max_decoding_sequences: _Optional[int] = ..., max_grad_message_bytes: _Optional[int] = ..., max_gradient_tiles: _Optional[int] = ...) -> None: ...

class AnswerTokens(_message.Message):
    __slots__ = ("yes", "no", "yes_id", "no_id")
    YES_FIELD_NUMBER: _ClassVar[int]
    NO_FIELD_NUMBER: _ClassVar[int]
    YES_ID_FIELD_NUMBER: _ClassVar[int]
    NO_ID_FIELD_NUMBER: _ClassVar[int]
    yes: str
    no: str
    yes_id: int
    no_id: int
    def __init__(self, yes: _Optional[str] = ..., no: _Optional[str] = ..., yes_id: _Optional[int] = ..., no_id: _Optional[int] = ...) -> None: ...

class DefaultInstruction(_message.Message):
    __slots__ = ("mode", "video", "template")
    MODE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    video: bool
    template: str
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., video: bool = ..., template: _Optional[str] = ...) -> None: ...
