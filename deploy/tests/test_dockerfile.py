"""The top-level Dockerfile and .dockerignore against the code (no Docker engine needed): ports,
REWARDDANCE_* variables, the non-root user, the gRPC health check, the build flags, the CUDA
runtime variant and what the build context carries. Run by deploy/ci.sh, or pytest deploy/tests.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache

import pytest
import yaml

import sources as src

DOCKERFILE = src.REPO / "Dockerfile"
DOCKERIGNORE = src.REPO / ".dockerignore"
RUNTIME_STAGES = ["cpu", "cuda"]
DEPLOYMENT = src.REPO / "deploy/base/deployment.yaml"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def one(self, op: str) -> str:
        found = self.all(op)
        assert len(found) == 1, f"stage {self.name}: expected one {op}, found {len(found)}"
        return found[0]


@lru_cache(maxsize=None)
def parse() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends in a continuation line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            m = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", rest, re.I)
            assert m, f"FROM without a stage name: {line}"
            stages.append(Stage(m.group(2), m.group(1)))
        elif not stages:
            assert op == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


def stage(name: str) -> Stage:
    found = [s for s in parse()[1] if s.name == name]
    assert len(found) == 1, f"expected one stage {name!r}, found {len(found)}"
    return found[0]


def expand(text: str) -> str:
    """Global ARG defaults substituted into `${NAME}`."""
    args = parse()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def env_of(s: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in s.all("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"stage {s.name}: use ENV KEY=VALUE, not {args!r}"
            env[key] = value
    return env


def healthcheck(s: Stage) -> tuple[dict[str, str], str]:
    """HEALTHCHECK options and the command it runs (a shell line)."""
    text = s.one("HEALTHCHECK")
    options = dict(re.findall(r"--([\w-]+)=(\S+)", text))
    cmd = re.search(r"\bCMD\s+(.*)$", text).group(1)
    if cmd.startswith("["):
        argv = yaml.safe_load(cmd)  # JSON array
        assert argv[:2] == ["/bin/sh", "-c"], f"stage {s.name}: exec-form HEALTHCHECK must run /bin/sh -c"
        cmd = argv[2]
    return options, cmd


def seconds(value: str) -> int:
    m = re.fullmatch(r"(\d+)(s|m)", value)
    assert m, f"duration {value!r}"
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


# ---------------------------------------------------------------------------------------------


def test_stages_and_default_target():
    names = [s.name for s in parse()[1]]
    assert {"probe", "cuda-build", "cpu-build", "cpu", "cuda"} <= set(names), names
    assert names[-1] == "cuda", "the last stage (the default target) must be the CUDA runtime"


def test_cuda_build_and_runtime_variants():
    build = stage("cuda-build")
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu\d\d\.\d\d", expand(build.base)), build.base
    assert "CUDA_COMPUTE_CAP=90" in build.all("ARG"), build.all("ARG")
    cmd = " ".join(build.all("RUN"))
    for part in ("cargo build", "--release", "--locked", "--features cuda", "-p rewarddance-cli"):
        assert part in cmd, f"cuda-build: no {part!r}"
    # cuBLAS / cuBLASLt / cuRAND / NVRTC are in the `runtime` variant, not in `base`.
    runtime = expand(stage("cuda").base)
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-runtime-ubuntu\d\d\.\d\d", runtime), runtime
    assert runtime.split(":")[1].split("-")[0] == expand(build.base).split(":")[1].split("-")[0], "same CUDA version"
    cpu_cmd = " ".join(stage("cpu-build").all("RUN"))
    assert "cargo build" in cpu_cmd and "--locked" in cpu_cmd and "cuda" not in cpu_cmd


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_exposed_ports_are_the_listen_addresses(name):
    s = stage(name)
    flags = src.flags()
    env = env_of(s)
    grpc = src.port_of(env.get("REWARDDANCE_ADDR", flags["addr"].default))
    metrics = src.port_of(env.get("REWARDDANCE_METRICS_ADDR", flags["metrics-addr"].default))
    exposed = {int(p.split("/")[0]) for args in s.all("EXPOSE") for p in args.split()}
    assert exposed == {grpc, metrics}, f"{name}: EXPOSE {sorted(exposed)} vs gRPC {grpc} + metrics {metrics}"
    # The image keeps the binary's defaults (so the k8s manifests, which set no address, agree).
    assert grpc == src.port_of(flags["addr"].default)
    assert metrics == src.port_of(flags["metrics-addr"].default)


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_env_vars_are_serve_flags(name):
    known = src.flags_by_env()
    env = env_of(stage(name))
    ours = {k: v for k, v in env.items() if k.startswith("REWARDDANCE_")}
    assert ours, f"{name}: sets no REWARDDANCE_* variable"
    unknown = sorted(set(ours) - set(known))
    assert not unknown, f"{name}: not a serve flag: {unknown}"
    assert ours.get("REWARDDANCE_LOG_FORMAT") in ("json", "human")
    assert ours.get("REWARDDANCE_DEVICE") == ("cpu" if name == "cpu" else "cuda:0")
    others = sorted(k for k in env if not k.startswith(("REWARDDANCE_", "NVIDIA_")))
    assert not others, f"{name}: unexpected ENV {others}"


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_runs_as_a_non_root_user(name):
    s = stage(name)
    user = s.one("USER")
    uid, _, gid = user.partition(":")
    assert uid not in ("0", "root") and gid not in ("0", "root"), user
    created = " ".join(s.all("RUN"))
    assert re.search(rf"useradd\b.*--uid {re.escape(uid)}\b", created), f"{name}: uid {uid} is never created"
    ops = [op for op, _ in s.instructions]
    assert ops.index("USER") > max(i for i, op in enumerate(ops) if op in ("RUN", "COPY")), "USER after the last RUN/COPY"


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_healthcheck_is_grpc_health_on_the_grpc_port(name):
    s = stage(name)
    options, cmd = healthcheck(s)
    assert "grpc_health_probe" in cmd
    assert f"-service={src.health_service_name()}" in cmd
    # The port follows REWARDDANCE_ADDR (default: the flag's).
    assert "-addr=127.0.0.1:${REWARDDANCE_ADDR##*:}" in cmd, cmd
    assert "REWARDDANCE_ADDR" in env_of(s)
    # With TLS on, the probe must speak TLS.
    assert "${REWARDDANCE_TLS_CERT:+-tls" in cmd
    assert src.flags_by_env().get("REWARDDANCE_TLS_CERT"), "REWARDDANCE_TLS_CERT is a serve flag"
    # The probe's timeout fits the check's, and start-up is given as long as the k8s startup probe.
    assert seconds(re.search(r"-rpc-timeout=(\w+)", cmd).group(1)) < seconds(options["timeout"])
    startup = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert seconds(options["start-period"]) >= startup["periodSeconds"] * startup["failureThreshold"]
    copies = s.all("COPY")
    assert any(c.startswith("--from=probe ") and "grpc_health_probe" in c for c in copies), copies


def test_health_probe_is_pinned_and_verified():
    args = parse()[0]
    assert re.fullmatch(r"v\d+\.\d+\.\d+", args["GRPC_HEALTH_PROBE_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["GRPC_HEALTH_PROBE_SHA256"])
    run = " ".join(stage("probe").all("RUN"))
    assert "${GRPC_HEALTH_PROBE_VERSION}" in run and "sha256sum -c" in run


def test_every_download_is_pinned_and_verified():
    """A RUN that fetches a file (curl / wget) checks it against a pinned sha256 in the same RUN and
    never pipes it into a shell; tools from crates.io are installed with --locked at a version."""
    args, stages = parse()
    for s in stages:
        for run in s.all("RUN"):
            if re.search(r"\b(curl|wget)\b[^&|;]*https?://", run):
                assert "sha256sum -c" in run, f"stage {s.name}: a download without a checksum: {run[:120]}"
                assert not re.search(r"\|\s*(ba)?sh\b", run), f"stage {s.name}: a download piped into a shell"
            for m in re.finditer(r"cargo install\b[^&;]*", run):
                assert "--locked" in m.group(0) and "--version" in m.group(0), f"stage {s.name}: {m.group(0)}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["RUSTUP_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{64}", args["RUSTUP_INIT_SHA256"])
    rustup = " ".join(stage("cuda-build").all("RUN"))
    assert "/rustup/archive/${RUSTUP_VERSION}/" in rustup and "${RUSTUP_INIT_SHA256}" in rustup
    assert "sh.rustup.rs" not in DOCKERFILE.read_text()


def _cargo_flags(cmd: str) -> set[str]:
    """The profile / feature / package flags of a `cargo build` or `cargo chef cook` command."""
    return set(re.findall(r"--release|--features \S+|--no-default-features|-p \S+|--package \S+", cmd))


@pytest.mark.parametrize("name", ["cuda-build", "cpu-build"])
def test_dependencies_build_in_a_layer_of_their_own(name):
    """Before the sources are copied in, the stage builds the dependencies from cargo-chef's recipe
    (manifests + Cargo.lock only), with the flags of the real build: a source change then reuses
    that layer and compiles only the workspace crates. No cache mount on the target dir, or the
    compiled dependencies would not be in the layer."""
    s = stage(name)
    steps = [(op, args) for op, args in s.instructions if op in ("COPY", "RUN")]
    cook = next((i for i, (op, a) in enumerate(steps) if op == "RUN" and "cargo chef cook" in a), None)
    build = next((i for i, (op, a) in enumerate(steps) if op == "RUN" and "cargo build" in a), None)
    assert cook is not None and build is not None, f"{name}: no `cargo chef cook` before `cargo build`"
    sources = [i for i, (op, a) in enumerate(steps) if op == "COPY" and a.split()[-2:] == [".", "."]]
    assert len(sources) == 1 and cook < sources[0] < build, f"{name}: want cook, then COPY . ., then build: {steps}"
    for op, a in steps[:cook]:
        if op == "COPY":
            assert "recipe.json" in a or "cargo-chef" in a, f"{name}: {a!r} copied before the dependency layer"
    cook_cmd, build_cmd = steps[cook][1], steps[build][1]
    assert _cargo_flags(cook_cmd) == _cargo_flags(build_cmd), f"{name}: cook {cook_cmd!r} vs build {build_cmd!r}"
    assert "--locked" in build_cmd
    for _, a in steps:
        assert not re.search(r"--mount=type=cache,target=\S*/target\b", a), f"{name}: target dir on a cache mount"
    planner = " ".join(stage("planner").all("RUN"))
    assert "cargo chef prepare --recipe-path recipe.json" in planner


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_pod_runs_as_the_image_user(name):
    """The Deployment's runAsUser / runAsGroup / fsGroup are the image's USER (a different uid can
    read nothing owned by the image's user, and hides which user the image expects)."""
    uid, _, gid = stage(name).one("USER").partition(":")
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["securityContext"]
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"]), str(pod["fsGroup"])) == (uid, gid, gid), (
        f"{name}: image runs as {uid}:{gid}, deploy/base/deployment.yaml as "
        f"{pod['runAsUser']}:{pod['runAsGroup']} (fsGroup {pod['fsGroup']})")


@pytest.mark.parametrize("name", RUNTIME_STAGES)
def test_entrypoint_serves(name):
    s = stage(name)
    assert yaml.safe_load(s.one("ENTRYPOINT")) == ["rewarddance"]
    assert yaml.safe_load(s.one("CMD")) == ["serve"]
    assert "Serve(" in (src.REPO / "crates/cli/src/main.rs").read_text()


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_build_context_has_what_the_build_needs():
    needed = [
        "Cargo.toml",
        "Cargo.lock",
        "proto/rewarddance/v1/reward.proto",
        # The bundled model is compiled in (include_bytes! in checkpoint.rs).
        "fixtures/models/tiny-internvl-hf/model.safetensors",
        "fixtures/reference/tiny-internvl-hf.json",
        *(p.relative_to(src.REPO).as_posix() for p in src.REPO.glob("crates/*/Cargo.toml")),
        *(p.relative_to(src.REPO).as_posix() for p in src.REPO.glob("crates/*/src/**/*.rs")),
        *(p.relative_to(src.REPO).as_posix() for p in src.REPO.glob("crates/*/build.rs")),
        *(p.relative_to(src.REPO).as_posix() for p in src.REPO.glob("crates/*/benches/*.rs")),
    ]
    missing = [p for p in needed if dockerignore_excludes(p)]
    assert not missing, f".dockerignore drops {missing[:5]}"
    checkpoint = (src.REPO / "crates/model/src/runtime/checkpoint.rs").read_text()
    assert "fixtures/models/tiny-internvl-hf/" in checkpoint, "bundled model moved: update .dockerignore"
    for kept_out in ("target/debug/rewarddance", "target-cuda/release/rewarddance", ".git/HEAD",
                     "clients/python/setup.py", "crates/cli/target/x"):
        assert dockerignore_excludes(kept_out), f"{kept_out} would be sent to the Docker daemon"
