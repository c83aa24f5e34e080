"""deploy/ checks: every kustomization renders, every rendered object validates against the
Kubernetes schemas (strict) or, for CRDs, against deploy/tests/crd-schemas/, and the manifests,
prometheus-adapter rules and dashboard agree with what the binary serves (sources.py); the
alerts are in test_alerts.py.

Run through deploy/ci.sh (pinned venv), or: pytest deploy/tests (needs kubectl for renders).
Environment: RD_K8S_VERSION (default 1.30.0), RD_BIN (a rewarddance binary to ask for flags and
to start for the live check; default: target/{debug,release}/rewarddance when fresh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import sources as src

DEPLOY = src.REPO / "deploy"
K8S_VERSION = os.environ.get("RD_K8S_VERSION", "1.30.0")
CRD_SCHEMAS = DEPLOY / "tests/crd-schemas"
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject",
}
DASHBOARD = DEPLOY / "dashboards/rewarddance.json"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter/values.yaml"
PROMQL_METRIC = re.compile(r"\b(" + re.escape(src.metric_prefix()) + r"[a-z0-9_]+)\b")

KUSTOMIZATIONS = sorted(
    p.parent.relative_to(DEPLOY).as_posix()
    for pattern in ("overlays/*/kustomization.yaml", "tests/compose/*/kustomization.yaml", "dashboards/kustomization.yaml")
    for p in DEPLOY.glob(pattern)
)
# The service's own manifests (the dashboard kustomization is only a ConfigMap).
SERVICE_KUSTOMIZATIONS = [k for k in KUSTOMIZATIONS if k != "dashboards"]


# ---------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=None)
def render(kdir: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not found: cannot render kustomizations")
    proc = subprocess.run([kubectl, "kustomize", str(DEPLOY / kdir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {kdir} failed:\n{proc.stderr}"
    out = DEPLOY.parent / "target/deploy-rendered" / (kdir.replace("/", "-") + ".yaml")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(proc.stdout)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def objects(kdir: str, kind: str) -> list[dict]:
    return [o for o in render(kdir) if o["kind"] == kind]


def one(kdir: str, kind: str) -> dict:
    found = objects(kdir, kind)
    assert len(found) == 1, f"{kdir}: expected one {kind}, found {len(found)}"
    return found[0]


def container(kdir: str) -> dict:
    pod = one(kdir, "Deployment")["spec"]["template"]["spec"]
    named = [c for c in pod["containers"] if c["name"] == "rewarddance"]
    assert len(named) == 1, f"{kdir}: no container named rewarddance"
    return named[0]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def setting(kdir: str, env: str) -> str:
    """The value the server runs with: the manifest's env value, else the flag default."""
    value = env_of(container(kdir)).get(env)
    if value is not None:
        return value
    flag = src.flags_by_env().get(env)
    assert flag is not None, f"{env} is not a flag of `rewarddance serve`"
    assert flag.default is not None, f"{env} has no default and is not set in {kdir}"
    return flag.default


def grpc_port(kdir: str) -> int:
    return src.port_of(setting(kdir, "REWARDDANCE_ADDR"))


def metrics_port(kdir: str) -> int:
    return src.port_of(setting(kdir, "REWARDDANCE_METRICS_ADDR"))


def named_ports(c: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_renders(kdir):
    assert render(kdir), f"{kdir} rendered nothing"


def test_every_overlay_is_checked():
    overlays = {p.name for p in (DEPLOY / "overlays").iterdir() if p.is_dir()}
    assert overlays >= {"cpu-dev", "gpu", "keda"}
    assert {f"overlays/{o}" for o in overlays} <= set(KUSTOMIZATIONS), "an overlay directory has no kustomization.yaml"


# ---------------------------------------------------------------------------------------------
# Schemas


@lru_cache(maxsize=None)
def crd_schema(name: str) -> dict:
    return json.loads((CRD_SCHEMAS / f"{name}.json").read_text())


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_schemas(kdir):
    """Core objects: kubernetes-validate, strict (unknown fields rejected), against K8S_VERSION.
    CRD objects: the minimal schema in crd-schemas/ (fields we use, additionalProperties false)."""
    errors = []
    for obj in render(kdir):
        what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        crd = CRD_KINDS.get((obj.get("apiVersion"), obj.get("kind")))
        try:
            if crd:
                jsonschema.Draft202012Validator(crd_schema(crd)).validate(obj)
            else:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{what}: no schema for {obj['apiVersion']} {obj['kind']} in Kubernetes {K8S_VERSION} "
                          f"(add a minimal one to deploy/tests/crd-schemas/ if it is a CRD)")
        except jsonschema.ValidationError as e:
            errors.append(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


# ---------------------------------------------------------------------------------------------
# Flags, ports, probes, drain


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_env_vars_are_serve_flags(kdir):
    known = src.flags_by_env()
    pod = one(kdir, "Deployment")["spec"]["template"]["spec"]
    for c in pod["containers"]:
        for e in c.get("env", []):
            if e["name"].startswith("REWARDDANCE_"):
                assert e["name"] in known, f"{kdir}: {e['name']} is not an env var of `rewarddance serve`"
    env = env_of(container(kdir))
    for name, value in env.items():
        default = known[name].default if name in known else None
        if value is not None and default is not None and re.fullmatch(r"\d+", default):
            assert re.fullmatch(r"\d+", value), f"{kdir}: {name}={value!r}, expected an integer like its default {default}"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_container_ports_match_listen_addresses(kdir):
    c = container(kdir)
    ports = named_ports(c)
    assert ports.get("grpc") == grpc_port(kdir), f"{kdir}: containerPort grpc {ports.get('grpc')} != gRPC listen port {grpc_port(kdir)}"
    assert ports.get("metrics") == metrics_port(kdir), f"{kdir}: containerPort metrics {ports.get('metrics')} != metrics port {metrics_port(kdir)}"
    for addr_env in ("REWARDDANCE_ADDR", "REWARDDANCE_METRICS_ADDR"):
        host = setting(kdir, addr_env).rsplit(":", 1)[0]
        assert host in ("0.0.0.0", "[::]"), f"{kdir}: {addr_env} listens on {host}: the kubelet and Services cannot reach it"
    assert "REWARDDANCE_NO_METRICS" not in env_of(c), f"{kdir}: metrics disabled but scraped and autoscaled on"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_probes_are_grpc_health_on_the_grpc_port(kdir):
    c = container(kdir)
    service = src.health_service_name()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{kdir}: no {probe}"
        grpc = c[probe].get("grpc")
        assert grpc, f"{kdir}: {probe} is not a native gRPC (grpc.health.v1) probe"
        assert grpc["port"] == grpc_port(kdir), f"{kdir}: {probe} port {grpc['port']} != gRPC port {grpc_port(kdir)}"
        assert grpc.get("service", "") in ("", service), f"{kdir}: {probe} asks for health of unknown service {grpc.get('service')!r}"
    assert c["readinessProbe"]["grpc"].get("service") == service, f"{kdir}: readiness should check {service}"
    # TLS: the kubelet's gRPC probes speak plaintext only.
    assert "REWARDDANCE_TLS_CERT" not in env_of(c), f"{kdir}: TLS on the only gRPC port breaks the kubelet's gRPC probes"


def probe_budget(p: dict) -> int:
    return p.get("periodSeconds", 10) * p.get("failureThreshold", 3)


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_startup_probe_covers_model_load(kdir):
    c = container(kdir)
    budget = probe_budget(c["startupProbe"])
    gpu = "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
    need = 600 if gpu else 60
    assert budget >= need, f"{kdir}: startupProbe allows {budget}s to load and warm up; want >= {need}s"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_drain_fits_termination_grace(kdir):
    pod = one(kdir, "Deployment")["spec"]["template"]["spec"]
    c = container(kdir)
    env = env_of(c)
    assert "REWARDDANCE_DRAIN_TIMEOUT_S" in env, f"{kdir}: set REWARDDANCE_DRAIN_TIMEOUT_S explicitly so the grace period can be checked"
    drain = int(setting(kdir, "REWARDDANCE_DRAIN_TIMEOUT_S"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {})
    assert "sleep" in pre_stop or "exec" in pre_stop, f"{kdir}: no preStop delay before SIGTERM"
    sleep = pre_stop["sleep"]["seconds"] if "sleep" in pre_stop else int(pre_stop["exec"]["command"][-1])
    assert sleep >= 5, f"{kdir}: preStop {sleep}s is too short for endpoint removal to propagate"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace >= sleep + drain + 5, f"{kdir}: terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {drain} + 5s margin"
    ready = c["readinessProbe"]
    assert probe_budget(ready) < sleep + drain, f"{kdir}: readiness takes longer to notice the drain than the drain lasts"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_pod_security(kdir):
    pod = one(kdir, "Deployment")["spec"]["template"]["spec"]
    assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{kdir}: pod not runAsNonRoot"
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, f"{kdir}/{c['name']}: root filesystem not read-only"
        assert sc.get("allowPrivilegeEscalation") is False, f"{kdir}/{c['name']}: privilege escalation allowed"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{kdir}/{c['name']}: capabilities not dropped"
        assert "memory" in c.get("resources", {}).get("limits", {}), f"{kdir}/{c['name']}: no memory limit"
    mounts = {m["mountPath"] for m in container(kdir).get("volumeMounts", [])}
    assert "/tmp" in mounts, f"{kdir}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_one_pod_per_accelerator(kdir):
    c = container(kdir)
    pod = one(kdir, "Deployment")["spec"]["template"]["spec"]
    limits = c.get("resources", {}).get("limits", {})
    devices = [d.strip() for d in setting(kdir, "REWARDDANCE_DEVICE").split(",") if d.strip()]
    if "nvidia.com/gpu" in limits:
        assert int(limits["nvidia.com/gpu"]) == 1, f"{kdir}: one pod per GPU"
        assert c["resources"]["requests"].get("nvidia.com/gpu") == limits["nvidia.com/gpu"], f"{kdir}: GPU request != limit"
        assert devices == ["cuda:0"], f"{kdir}: a one-GPU pod sees its GPU as cuda:0, REWARDDANCE_DEVICE={devices}"
        assert pod.get("nodeSelector") or pod.get("affinity"), f"{kdir}: GPU pods without a node selector"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), f"{kdir}: no toleration for GPU node taints"
        assert env_of(c).get("REWARDDANCE_MODEL"), f"{kdir}: GPU overlay serving the bundled random-weight model"
    else:
        assert devices == ["cpu"], f"{kdir}: REWARDDANCE_DEVICE={devices} without a GPU resource"
    model = env_of(c).get("REWARDDANCE_MODEL")
    if model and model.startswith("/"):
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        base = next((p for p in mounts if model.startswith(p.rstrip("/") + "/")), None)
        assert base, f"{kdir}: REWARDDANCE_MODEL={model} is on no mounted volume"
        assert mounts[base].get("readOnly"), f"{kdir}: model volume mounted read-write"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_shared_model_claim_names_its_storage_class(kdir):
    """A ReadOnlyMany claim says which storage class provides it: without one it gets the
    cluster's default class, usually ReadWriteOnce only, and stays Pending with every pod."""
    for pvc in objects(kdir, "PersistentVolumeClaim"):
        if "ReadOnlyMany" in pvc["spec"].get("accessModes", []):
            assert "storageClassName" in pvc["spec"], f"{kdir}: PVC {pvc['metadata']['name']} names no storageClassName"


# ---------------------------------------------------------------------------------------------
# Services, monitors, PDB


def pod_labels(kdir: str) -> dict[str, str]:
    return one(kdir, "Deployment")["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_services(kdir):
    labels = pod_labels(kdir)
    ports = named_ports(container(kdir))
    services = {s["metadata"]["name"]: s for s in objects(kdir, "Service")}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    regular = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert headless and regular, f"{kdir}: want a headless Service (client-side round robin) and a regular one"
    assert all(not s["spec"].get("publishNotReadyAddresses") for s in headless), f"{kdir}: headless Service publishes unready pods"
    for s in services.values():
        assert selects(s["spec"]["selector"], labels), f"{kdir}: Service {s['metadata']['name']} selects no pod"
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            number = ports.get(target) if isinstance(target, str) else target
            assert number in ports.values(), f"{kdir}: Service {s['metadata']['name']} port {p['name']} targets {target}, not a container port"
            if p["name"] == "grpc":
                assert number == grpc_port(kdir)
            if p["name"] == "metrics":
                assert number == metrics_port(kdir)
    assert any(p["name"] == "grpc" for s in headless for p in s["spec"]["ports"]), f"{kdir}: headless Service without the grpc port"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_scrape_config_hits_metrics_endpoint(kdir):
    labels = pod_labels(kdir)
    services = objects(kdir, "Service")
    path = src.metrics_path()
    for sm in objects(kdir, "ServiceMonitor"):
        matched = [s for s in services if selects(sm["spec"]["selector"].get("matchLabels", {}), s["metadata"].get("labels", {}))]
        assert matched, f"{kdir}: ServiceMonitor selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert ep.get("path", "/metrics") == path
            with_port = [s for s in matched if any(p["name"] == ep["port"] for p in s["spec"]["ports"])]
            assert with_port, f"{kdir}: ServiceMonitor port {ep['port']} is on no selected Service"
            for s in with_port:
                p = next(p for p in s["spec"]["ports"] if p["name"] == ep["port"])
                target = p.get("targetPort", p["port"])
                number = named_ports(container(kdir)).get(target) if isinstance(target, str) else target
                assert number == metrics_port(kdir), f"{kdir}: ServiceMonitor scrapes port {number}, metrics are on {metrics_port(kdir)}"
    for pm in objects(kdir, "PodMonitor"):
        assert selects(pm["spec"]["selector"].get("matchLabels", {}), labels), f"{kdir}: PodMonitor selects no pod"
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert named_ports(container(kdir)).get(ep["port"]) == metrics_port(kdir)
            assert ep.get("path", "/metrics") == path
    monitors = objects(kdir, "ServiceMonitor") + objects(kdir, "PodMonitor")
    assert len(monitors) <= 1, f"{kdir}: several monitors scrape the same pods (duplicate series)"
    if objects(kdir, "HorizontalPodAutoscaler") or objects(kdir, "ScaledObject") or objects(kdir, "PrometheusRule"):
        assert monitors, f"{kdir}: autoscaling/alerts on metrics nobody scrapes"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_pdb(kdir):
    pdb = one(kdir, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(kdir))
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


# ---------------------------------------------------------------------------------------------
# Metric names in PromQL and autoscalers


def check_promql(expr: str, where: str) -> set[str]:
    """Every rewarddance_* name in `expr` is a served metric (histogram series suffixes allowed
    on histograms only), every label matcher on our metrics names a known label value."""
    known = src.metrics()
    used = set()
    for name in PROMQL_METRIC.findall(expr):
        base = name
        if name not in known:
            m = re.fullmatch(r"(.+)_(bucket|sum|count)", name)
            assert m and m.group(1) in known, f"{where}: {name} is not a rewarddance metric (crates/engine/src/metrics.rs ALL)"
            base = m.group(1)
            assert known[base].kind == "histogram", f"{where}: {name}: {base} is a {known[base].kind}, not a histogram"
        elif known[name].kind == "histogram":
            raise AssertionError(f"{where}: histogram {name} used without _bucket/_sum/_count")
        used.add(base)
    for label, values in (("reason", src.failure_reasons()), ("code", src.GRPC_CODES), ("method", src.rpc_methods())):
        for op, value in re.findall(label + r'\s*(=~|!=|=)\s*"([^"]*)"', expr):
            for v in (value.split("|") if op == "=~" else [value]):
                assert v in values, f"{where}: {label}{op}\"{value}\": {v!r} is not a value the server emits ({sorted(values)})"
    return used


@lru_cache(maxsize=None)
def adapter_rules() -> dict[str, dict]:
    """custom metric name -> rule, from deploy/prometheus-adapter/values.yaml."""
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    out = {}
    for r in rules:
        series = PROMQL_METRIC.findall(r["seriesQuery"])
        assert len(series) == 1, f"adapter rule {r['seriesQuery']}: want one rewarddance metric"
        check_promql(r["seriesQuery"], "prometheus-adapter seriesQuery")
        check_promql(r["metricsQuery"], "prometheus-adapter metricsQuery")
        exposed = re.sub(r["name"]["matches"], r["name"].get("as", "") or series[0], series[0]) if r.get("name") else series[0]
        out[exposed] = r
    return out


def test_adapter_rules():
    rules = adapter_rules()
    assert rules, "no prometheus-adapter rules"
    for name, r in rules.items():
        series = PROMQL_METRIC.findall(r["seriesQuery"])[0]
        assert src.metrics()[series].kind == "gauge", f"adapter exposes {series}: a {src.metrics()[series].kind}, autoscale on gauges"
        assert set(r["resources"]["overrides"]) >= {"namespace", "pod"}, f"adapter rule {name}: needs namespace and pod labels"
        assert "<<.LabelMatchers>>" in r["metricsQuery"] and "<<.GroupBy>>" in r["metricsQuery"]


def hpa_targets(kdir: str) -> dict[str, float]:
    hpa = one(kdir, "HorizontalPodAutoscaler")
    out = {}
    for m in hpa["spec"]["metrics"]:
        assert m["type"] == "Pods", f"{kdir}: HPA metric type {m['type']}; the service exports per-pod gauges"
        out[m["pods"]["metric"]["name"]] = float(m["pods"]["target"]["averageValue"])
    return out


def check_targets(kdir: str, targets: dict[str, float], what: str):
    batch = int(setting(kdir, "REWARDDANCE_MAX_BATCH_ITEMS"))
    limit = int(setting(kdir, "REWARDDANCE_MAX_QUEUE_ITEMS"))
    for name, target in targets.items():
        assert name in src.metrics() and src.metrics()[name].kind == "gauge", f"{kdir}: {what} scales on {name}, not a served gauge"
        # Scale out before the admission limit rejects calls; not while batches are still filling.
        assert target < 0.5 * limit, f"{kdir}: {what} target {name}={target} too close to REWARDDANCE_MAX_QUEUE_ITEMS={limit}"
        assert target >= batch, f"{kdir}: {what} target {name}={target} below one batch (REWARDDANCE_MAX_BATCH_ITEMS={batch})"


@pytest.mark.parametrize("kdir", SERVICE_KUSTOMIZATIONS)
def test_autoscaler(kdir):
    hpas, scaled = objects(kdir, "HorizontalPodAutoscaler"), objects(kdir, "ScaledObject")
    assert len(hpas) + len(scaled) <= 1, f"{kdir}: HPA and KEDA both scale the Deployment"
    deployment = one(kdir, "Deployment")
    if not hpas and not scaled:
        assert deployment["spec"].get("replicas"), f"{kdir}: no autoscaler and no replica count"
        return
    assert "replicas" not in deployment["spec"], f"{kdir}: spec.replicas fights the autoscaler on every apply"
    name = deployment["metadata"]["name"]
    if hpas:
        hpa = hpas[0]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        targets = hpa_targets(kdir)
        for metric in targets:
            assert metric in adapter_rules(), f"{kdir}: HPA metric {metric} is not exposed by deploy/prometheus-adapter/values.yaml"
        check_targets(kdir, targets, "HPA")
        assert hpa["spec"]["minReplicas"] >= 2 or "nvidia.com/gpu" not in str(deployment), f"{kdir}: one GPU replica leaves no room for rollouts"
    if scaled:
        so = scaled[0]
        assert so["spec"]["scaleTargetRef"]["name"] == name
        namespace = so["metadata"].get("namespace")
        targets = {}
        for t in so["spec"]["triggers"]:
            assert t["type"] == "prometheus"
            query = t["metadata"]["query"]
            used = check_promql(query, f"{kdir} ScaledObject")
            assert len(used) == 1, f"{kdir}: ScaledObject query {query} should read one metric"
            if t.get("metricType", "AverageValue") == "AverageValue":
                assert query.strip().startswith("sum("), f"{kdir}: AverageValue divides by replicas: query must be a sum"
            ns = re.search(r'namespace="([^"]+)"', query)
            assert ns and ns.group(1) == namespace, f"{kdir}: ScaledObject query namespace {ns and ns.group(1)} != {namespace}"
            targets[used.pop()] = float(t["metadata"]["threshold"])
        check_targets(kdir, targets, "ScaledObject")
        # Same signals and targets as the HPA it replaces.
        base = "overlays/gpu"
        assert targets == hpa_targets(base), f"{kdir}: KEDA thresholds {targets} != HPA targets {hpa_targets(base)}"


# ---------------------------------------------------------------------------------------------
# Dashboard


def dashboard_exprs() -> list[tuple[str, str]]:
    d = json.loads(DASHBOARD.read_text())
    out = []
    for p in d["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in d["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            out.append((f"variable {v['name']}", q["query"]))
    return out


def test_dashboard_metrics_are_served():
    for title, expr in dashboard_exprs():
        check_promql(expr, f"dashboard panel {title!r}")


def test_dashboard_covers_every_metric():
    used = set()
    for title, expr in dashboard_exprs():
        used |= check_promql(expr, title)
    missing = set(src.metrics()) - used
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


def test_dashboard_structure():
    d = json.loads(DASHBOARD.read_text())
    assert d["uid"] and d["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("items scored per second", "latency", "queue depth", "batch size", "failures", "gpus"):
        assert topic in titles, f"dashboard has no panel about {topic}"
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", f"panel {p['title']}: hard-wired data source"


# ---------------------------------------------------------------------------------------------
# Flags from the binary, and the binary itself


def test_binary_flags_agree_with_source():
    binary, why = src.fresh_binary()
    if not binary:
        pytest.skip(f"no fresh binary: {why}")
    from_binary = src.flags_from_binary(binary)
    from_source = src.flags_from_source()
    diff = {k: (from_source.get(k), from_binary.get(k)) for k in set(from_source) | set(from_binary)
            if (from_source.get(k) and from_source[k].default) != (from_binary.get(k) and from_binary[k].default)}
    assert not diff, f"sources.py's parse of the Rust flags disagrees with `{binary} serve --help`: {diff}"


def free(port: int) -> bool:
    with socket.socket() as s:
        # Like the server's listener (tokio sets SO_REUSEADDR): TIME_WAIT leftovers are no conflict.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_binary_serves_what_cpu_dev_declares():
    """Starts the binary with the cpu-dev container's environment (ports untouched), waits until
    /metrics on the declared metrics port reports SERVING, checks the gRPC port accepts
    connections, every served metric is in ALL and the queue-capacity gauge is the pod's
    REWARDDANCE_MAX_QUEUE_ITEMS, then SIGTERMs it: it must exit within the drain timeout (nothing
    in flight)."""
    binary, why = src.fresh_binary()
    if not binary:
        pytest.skip(f"no fresh binary: {why}")
    kdir = "overlays/cpu-dev"
    gport, mport = grpc_port(kdir), metrics_port(kdir)
    if not (free(gport) and free(mport)):
        pytest.skip(f"ports {gport}/{mport} busy on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDDANCE_")}
    for e in container(kdir).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "requests.cpu":
            env[e["name"]] = str(max(1, int(float(container(kdir)["resources"]["requests"]["cpu"]))))
    args = container(kdir).get("args", [])
    proc = subprocess.Popen([str(binary), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + probe_budget(container(kdir)["startupProbe"])
        text = ""
        while time.time() < deadline:
            assert proc.poll() is None, f"server exited: {proc.stderr.read()[-2000:]}"
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{mport}{src.metrics_path()}", timeout=2).read().decode()
                if re.search(r"^rewarddance_serving(\{[^}]*\})? 1\b", text, re.M):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"not SERVING on /metrics within the startup probe's budget; last scrape:\n{text[-1500:]}")
        with socket.create_connection(("127.0.0.1", gport), timeout=5):
            pass
        served = set(re.findall(r"^(rewarddance_[a-z0-9_]+?)(?:_bucket|_sum|_count)?(?:\{| )", text, re.M))
        unknown = served - set(src.metrics())
        assert not unknown, f"/metrics serves metrics missing from metrics.rs ALL: {unknown}"
        # The queue-saturation alert divides by this gauge: it must be the pod's setting.
        limit = int(setting(kdir, "REWARDDANCE_MAX_QUEUE_ITEMS"))
        capacity = re.search(r"^rewarddance_queue_capacity_items(?:\{[^}]*\})? (\S+)$", text, re.M)
        assert capacity and float(capacity.group(1)) == limit, (
            f"/metrics: rewarddance_queue_capacity_items is {capacity and capacity.group(1)}, "
            f"the pod runs REWARDDANCE_MAX_QUEUE_ITEMS={limit}")
        started = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=int(setting(kdir, "REWARDDANCE_DRAIN_TIMEOUT_S")) + 5)
        assert proc.returncode == 0, f"exit code {proc.returncode} after SIGTERM"
        assert time.time() - started < int(setting(kdir, "REWARDDANCE_DRAIN_TIMEOUT_S"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
