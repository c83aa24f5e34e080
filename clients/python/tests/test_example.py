"""The GRPO example's advantage math, and the examples end to end against the fake server."""
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLIENT_ROOT, SUBPROCESS_KW

_spec = importlib.util.spec_from_file_location("grpo_rewards", CLIENT_ROOT / "examples" / "grpo_rewards.py")
grpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grpo)


def test_group_advantages_mask_failures():
    nan = np.nan
    scores = np.array([0.2, 0.4, nan, 0.6, 0.9, nan, nan, nan])
    ok = ~np.isnan(scores)
    adv, mask = grpo.group_advantages(scores, ok, 4)
    valid = np.array([0.2, 0.4, 0.6])
    want = (valid - valid.mean()) / (valid.std() + 1e-4)
    np.testing.assert_allclose(adv[[0, 1, 3]], want)
    assert adv[2] == 0 and not mask[2]
    assert abs(adv[:4].sum()) < 1e-9  # zero-mean over the valid items of the group
    # Second group: one valid sample only -> no signal, nothing trains on it.
    assert (adv[4:] == 0).all() and not mask[4:].any()
    assert not np.isnan(adv).any()


def test_group_advantages_equal_scores():
    adv, mask = grpo.group_advantages(np.full(4, 0.5), np.ones(4, bool), 4)
    assert (adv == 0).all() and mask.all()


def test_example_runs_against_fake(fake):
    p = subprocess.run([sys.executable, str(CLIENT_ROOT / "examples" / "grpo_rewards.py"), "--target",
                        fake.target, "--steps", "1"], capture_output=True, text=True, timeout=60,
                       **SUBPROCESS_KW)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "scored 7/8" in p.stdout and "item 1 masked" in p.stdout and "advantages" in p.stdout


def test_refl_example_runs_against_fake(fake):
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, str(CLIENT_ROOT / "examples" / "refl_step.py"), "--server", fake.target,
                        "--steps", "3", "--size", "16"], capture_output=True, text=True, timeout=120, **SUBPROCESS_KW)
    assert p.returncode == 0, p.stdout + p.stderr
    before, after = refl_means(p.stdout)
    assert after > before, p.stdout  # the fake's reward is smooth: three Adam steps raise it


def refl_means(stdout: str):
    """(before, after) from the example's last line."""
    m = re.search(r"mean \w+: ([0-9.e-]+) before, ([0-9.e-]+) after", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2))
