"""What the rewarddance binary serves, read from its one source of truth.

Flags and defaults: the built binary's `serve --help` when a fresh one is available (clap prints
`[env: X=]` and `[default: Y]` for every flag), else the `#[arg(...)]` attributes of the Rust
sources; both are parsed and compared when both are available. Metric names, the health service
name, the /metrics path and failure reasons come from the Rust sources (no subcommand prints
them yet).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CONFIG_RS = REPO / "crates/server/src/config.rs"
MODEL_ARGS_RS = REPO / "crates/cli/src/model_args.rs"
SERVE_RS = REPO / "crates/cli/src/serve.rs"
METRICS_RS = REPO / "crates/engine/src/metrics.rs"
# Failure reasons: the kinds' and the model errors' (result.rs), and the job's own (job.rs).
REASON_RS = [REPO / "crates/engine/src/result.rs", REPO / "crates/engine/src/job.rs"]
TELEMETRY_RS = REPO / "crates/server/src/telemetry.rs"
SERVER_SRC = REPO / "crates/server/src"
PROTO_LIB_RS = REPO / "crates/proto/src/lib.rs"

# The gRPC status codes by their canonical names (the `code` label of
# rewarddance_requests_total, `status::code_name` in crates/server/src/status.rs).
GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}


@dataclass
class Flag:
    long: str
    env: str | None
    default: str | None  # as the binary would print it; None: no default


@dataclass
class Metric:
    name: str
    kind: str  # counter | gauge | histogram
    labels: set[str] = field(default_factory=set)


def _strip_int(text: str) -> str:
    """`16_384` -> `16384`, `64 << 20` -> `67108864`; other text unchanged."""
    t = text.strip().replace("_", "")
    m = re.fullmatch(r"(\d+)\s*<<\s*(\d+)", t)
    if m:
        return str(int(m.group(1)) << int(m.group(2)))
    return t if re.fullmatch(r"\d+", t) else text.strip()


def _consts(text: str) -> dict[str, str]:
    """`pub const NAME: &str = "..."` and numeric `pub const NAME: T = 123;` values of `text`."""
    consts = dict(re.findall(r'pub const (\w+): &(?:\'static )?str = "([^"]*)";', text))
    consts.update(re.findall(r"pub const (\w+): (?:u\d+|usize) = ([\d_]+(?:\s*<<\s*\d+)?);", text))
    return consts


@lru_cache(maxsize=None)
def _workspace_consts() -> dict[str, str]:
    """Every `pub const` of the workspace's sources by name (associated ones too: the flags read
    defaults such as `EngineConfig::DEFAULT_MAX_QUEUE_ITEMS`), a const defined as another
    (`= BatchBudget::DEFAULT_TOKENS;`) resolved to its value."""
    text = "\n".join(p.read_text() for p in REPO.glob("crates/*/src/**/*.rs"))
    consts = _consts(text)
    aliases = dict(re.findall(r"pub const (\w+): (?:u\d+|usize) = (?:\w+::)?([A-Z][A-Z0-9_]+);", text))
    for name, target in aliases.items():
        if target in consts:
            consts.setdefault(name, consts[target])
    return consts


def _default_value(value: str, consts: dict[str, str]) -> str:
    """What `--help` prints for `default_value_t = value`: a const's value (`Type::NAME`, or
    `NAME as u32`), an enum variant in lower case, or the literal."""
    value = re.sub(r"\s+as\s+\w+$", "", value.strip())
    qualified = re.fullmatch(r"(?:\w+::)?(\w+)", value)
    if qualified and qualified.group(1) in consts:
        return _strip_int(consts[qualified.group(1)])
    if qualified and "::" in value:
        return qualified.group(1).lower()
    return _strip_int(value)


def _rust_field_to_long(name: str) -> str:
    return name.replace("_", "-")


def flags_from_source() -> dict[str, Flag]:
    """`--long` -> Flag, from the `#[arg(...)]` attributes of every `serve` argument struct."""
    flags: dict[str, Flag] = {}
    for path in (MODEL_ARGS_RS, CONFIG_RS, SERVE_RS):
        text = path.read_text()
        consts = {**_workspace_consts(), **_consts(text)}
        for attr, fname in re.findall(r"#\[arg\(([^\]]*)\)\]\s*(?:pub\s+)?(\w+)\s*:", text):
            long = _rust_field_to_long(fname)
            if long in flags:
                continue
            env = re.search(r'env\s*=\s*"(\w+)"', attr)
            default = None
            m = re.search(r"default_value_t\s*=\s*([^,\n]+?)\s*(?:,|$)", attr)
            if m:
                default = _default_value(m.group(1), consts)
            else:
                m = re.search(r'default_value\s*=\s*(?:"([^"]*)"|(?:\w+::)?(\w+))', attr)
                if m:
                    default = m.group(1) if m.group(1) is not None else consts[m.group(2)]
            flags[long] = Flag(long=long, env=env.group(1) if env else None, default=default)
    return flags


def _binary_candidates() -> list[Path]:
    if os.environ.get("RD_BIN"):
        return [Path(os.environ["RD_BIN"])]
    return [REPO / "target/debug/rewarddance", REPO / "target/release/rewarddance"]


@lru_cache(maxsize=None)
def fresh_binary() -> tuple[Path | None, str]:
    """A `rewarddance` binary built from the current sources, and why not when there is none.

    RD_BIN is trusted as is; otherwise the newest of target/{debug,release}/rewarddance is used
    when no Rust source or Cargo.lock is newer than it.
    """
    if os.environ.get("RD_BIN"):
        path = Path(os.environ["RD_BIN"])
        return (path, "RD_BIN") if path.is_file() else (None, f"RD_BIN={path} does not exist")
    found = [p for p in _binary_candidates() if p.is_file()]
    if not found:
        return None, "no target/{debug,release}/rewarddance (build it, or set RD_BIN)"
    binary = max(found, key=lambda p: p.stat().st_mtime)
    built = binary.stat().st_mtime
    sources = [REPO / "Cargo.lock", *REPO.glob("crates/*/src/**/*.rs"), *REPO.glob("crates/*/Cargo.toml")]
    newer = [s for s in sources if s.stat().st_mtime > built]
    if newer:
        return None, f"{binary.relative_to(REPO)} is older than {newer[0].relative_to(REPO)} (rebuild, or set RD_BIN)"
    return binary, str(binary.relative_to(REPO))


def flags_from_binary(binary: Path) -> dict[str, Flag]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDDANCE_")}
    out = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    flags: dict[str, Flag] = {}
    # Each option starts with `  --long` (or `-s, --long`) at the start of a line.
    blocks = re.split(r"\n(?=\s{2,}(?:-\w, )?--[\w-]+)", out)
    for block in blocks:
        m = re.match(r"\s*(?:-\w, )?--([\w-]+)", block)
        if not m or m.group(1) in ("help", "version"):
            continue
        env = re.search(r"\[env: (\w+)", block)
        default = re.search(r"\[default: ([^\]]*)\]", block)
        flags[m.group(1)] = Flag(m.group(1), env.group(1) if env else None, default.group(1) if default else None)
    return flags


@lru_cache(maxsize=None)
def flags() -> dict[str, Flag]:
    binary, _ = fresh_binary()
    return flags_from_binary(binary) if binary else flags_from_source()


def flags_by_env() -> dict[str, Flag]:
    return {f.env: f for f in flags().values() if f.env}


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


@lru_cache(maxsize=None)
def metrics() -> dict[str, Metric]:
    """Every name in metrics.rs's `ALL`, with its kind (from the `/// Kind:` doc line) and labels."""
    text = METRICS_RS.read_text()
    consts: dict[str, tuple[str, str]] = {}
    for kind, const, value in re.findall(r"///\s*(Counter|Gauge|Histogram):[^\n]*\n\s*pub const (\w+): &str = \"([^\"]+)\";", text):
        consts[const] = (value, kind.lower())
    all_block = re.search(r"pub const ALL: &\[&str\] = &\[(.*?)\];", text, re.S)
    assert all_block, "metrics.rs: no `pub const ALL` list"
    out: dict[str, Metric] = {}
    for const in re.findall(r"\b([A-Z][A-Z0-9_]+)\b", all_block.group(1)):
        assert const in consts, f"metrics.rs: {const} in ALL has no `/// Counter|Gauge|Histogram:` doc line"
        name, kind = consts[const]
        out[name] = Metric(name, kind)
    # Labels: `counter!(CONST, "label" => ...)` etc. in the engine and the server.
    sources = "\n".join(p.read_text() for p in [*METRICS_RS.parent.glob("*.rs"), *SERVER_SRC.rglob("*.rs")])
    for const, args in re.findall(r"(?:counter|gauge|histogram)!\(\s*(?:names::|metrics::|rewarddance_engine::metrics::)?([A-Z][A-Z0-9_]+)\s*,([^;]*?)\)", sources, re.S):
        if const in consts and consts[const][0] in out:
            out[consts[const][0]].labels.update(re.findall(r'"(\w+)"\s*=>', args))
    return out


def metric_prefix() -> str:
    return re.search(r'pub const PREFIX: &str = "([^"]+)";', METRICS_RS.read_text()).group(1)


def health_service_name() -> str:
    return re.search(r'pub const SERVICE_NAME: &str = "([^"]+)";', PROTO_LIB_RS.read_text()).group(1)


def metrics_path() -> str:
    m = re.search(r'\.route\(\s*"([^"]+)"', TELEMETRY_RS.read_text())
    assert m, "telemetry.rs: no axum route for /metrics"
    return m.group(1)


def failure_reasons() -> set[str]:
    """Values of the `reason` label of rewarddance_item_failures_total."""
    text = "\n".join(p.read_text() for p in REASON_RS)
    reasons = set(re.findall(r'=>\s*"([a-z_]+)"', text))
    reasons |= set(re.findall(r'record_item_failure\("([a-z_]+)"\)', text))
    return reasons


def rpc_methods() -> set[str]:
    """Values of the `method` label of rewarddance_requests_total / _request_duration_seconds."""
    text = "\n".join(p.read_text() for p in SERVER_SRC.rglob("*.rs"))
    return (
        set(re.findall(r'Call::start\(\s*"(\w+)"', text))
        | set(re.findall(r'"method"\s*=>\s*"(\w+)"', text))
    )
