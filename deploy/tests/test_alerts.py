"""deploy/ alerts (the PrometheusRule of every rendered kustomization) against the code and the
runbook: metric names and label values are served ones (test_manifests.check_promql), every
alert links a heading of docs/runbook.md, the links all start with one configurable base, and
the queue-saturation ratio divides by each pod's own admission limit (a gauge), not a number.

Run through deploy/ci.sh, or: pytest deploy/tests (needs kubectl for renders).
"""

from __future__ import annotations

import re

import pytest
import yaml

import sources as src
import test_manifests as m

# Alert runbook headings: docs/runbook.md, or README.md once the runbook is merged into it.
RUNBOOKS = [src.REPO / "docs/runbook.md", src.REPO / "README.md"]
# The runbook_url base when no overlay sets one: the runbook's path in this repository.
DEFAULT_RUNBOOK_BASE = "docs/runbook.md"
RUNBOOK_CONFIGMAP = "rewarddance-runbook"
IN_FLIGHT = "rewarddance_items_in_flight"
CAPACITY = "rewarddance_queue_capacity_items"


def alert_rules(kdir: str) -> dict[str, dict]:
    """Alert name -> rule, over every PrometheusRule that `kdir` renders."""
    return {rule["alert"]: rule
            for pr in m.objects(kdir, "PrometheusRule")
            for group in pr["spec"]["groups"]
            for rule in group["rules"] if "alert" in rule}


def runbook_anchors() -> set[str]:
    anchors = set()
    for runbook in RUNBOOKS:
        if runbook.exists():
            for title in re.findall(r"^#+\s+(.+?)\s*$", runbook.read_text(), re.M):
                anchors.add(re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-"))
    return anchors


def rules_or_skip(kdir: str) -> dict[str, dict]:
    rules = alert_rules(kdir)
    if not rules:
        pytest.skip(f"{kdir} ships no PrometheusRule")
    return rules


@pytest.mark.parametrize("kdir", m.SERVICE_KUSTOMIZATIONS)
def test_alerts(kdir):
    rules = rules_or_skip(kdir)
    anchors = runbook_anchors()
    for name, rule in rules.items():
        where = f"{kdir} alert {name}"
        m.check_promql(rule["expr"], where)
        assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info"), f"{where}: severity"
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert url.endswith("#" + name.lower()), f"{where}: runbook_url should end with #{name.lower()}"
        assert name.lower() in anchors, f"{where}: neither docs/runbook.md nor README.md has a heading {name}"
    for need in ("RewardDanceItemErrorRateHigh", "RewardDanceQueueSaturated", "RewardDanceScoreLatencyHigh"):
        assert need in rules, f"{kdir}: missing alert {need}"


def configured_runbook_base(kdir: str) -> str | None:
    """The `url` that `kdir`'s own kustomization.yaml gives the runbook ConfigMap, if any."""
    k = yaml.safe_load((m.DEPLOY / kdir / "kustomization.yaml").read_text())
    for gen in k.get("configMapGenerator", []):
        if gen.get("name") == RUNBOOK_CONFIGMAP:
            for literal in gen.get("literals", []):
                key, _, value = literal.partition("=")
                if key == "url":
                    return value
    return None


@pytest.mark.parametrize("kdir", m.SERVICE_KUSTOMIZATIONS)
def test_runbook_urls_share_one_configurable_base(kdir):
    """Every runbook_url is <base>#<alert>: the base is the URL an overlay sets (through
    components/runbook-url), else the runbook's path in this repository, never a guessed
    repository address."""
    rules = rules_or_skip(kdir)
    bases = {rule["annotations"]["runbook_url"].rsplit("#", 1)[0] for rule in rules.values()}
    assert len(bases) == 1, f"{kdir}: runbook_url bases differ: {sorted(bases)}"
    base = bases.pop()
    want = configured_runbook_base(kdir) or DEFAULT_RUNBOOK_BASE
    assert base == want, f"{kdir}: runbook_url base {base!r}, expected {want!r}"
    if not re.match(r"https?://", base):
        assert (src.REPO / base).is_file(), f"{kdir}: runbook_url base {base} is no file of this repository"
    assert not any(o["kind"] == "ConfigMap" and o["metadata"]["name"] == RUNBOOK_CONFIGMAP for o in m.render(kdir)), (
        f"{kdir}: the local-config {RUNBOOK_CONFIGMAP} ConfigMap was rendered")


def test_runbook_url_can_be_set_by_an_overlay():
    """The operator's path is exercised: some kustomization sets a URL and its alerts use it."""
    assert any(configured_runbook_base(k) for k in m.SERVICE_KUSTOMIZATIONS), (
        "no kustomization under deploy/tests/compose sets the runbook URL")


@pytest.mark.parametrize("kdir", m.SERVICE_KUSTOMIZATIONS)
def test_queue_saturation_divides_by_each_pods_capacity(kdir):
    """items in flight / the pod's own --max-queue-items, exported by the server as a gauge: the
    ratio is right for every pod, whatever its setting, and no number in the rule can go stale."""
    rules = rules_or_skip(kdir)
    expr = " ".join(rules["RewardDanceQueueSaturated"]["expr"].split())
    used = m.check_promql(expr, f"{kdir} RewardDanceQueueSaturated")
    assert used == {IN_FLIGHT, CAPACITY}, f"{kdir}: RewardDanceQueueSaturated reads {sorted(used)}"
    assert src.metrics()[CAPACITY].kind == "gauge" and not src.metrics()[CAPACITY].labels
    # Both sides per pod and matched on the pod, then one threshold, the only number in the rule.
    shape = (rf"max by \(namespace, pod\) \({IN_FLIGHT}\) / on \(namespace, pod\) "
             rf"max by \(namespace, pod\) \({CAPACITY}\) > (0\.\d+)")
    mt = re.fullmatch(shape, expr)
    assert mt, f"{kdir}: RewardDanceQueueSaturated is {expr!r}, expected the shape {shape!r}"
    assert re.findall(r"(?<![\w.])\d+(?:\.\d+)?", expr) == [mt.group(1)], f"{kdir}: a number besides the threshold"
