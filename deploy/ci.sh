#!/usr/bin/env bash
# deploy/ CI: render every kustomization with `kubectl kustomize`, validate the rendered objects
# (kubernetes-validate, strict, Kubernetes $RD_K8S_VERSION; CRDs against deploy/tests/crd-schemas),
# and check them against the code (deploy/tests/test_manifests.py), and check the top-level
# Dockerfile + .dockerignore against the code (deploy/tests/test_dockerfile.py). Ends with `N passed, M failed`;
# exits non-zero on any failure.
#
# Environment:
#   RD_K8S_VERSION   Kubernetes version to validate against (default 1.30.0)
#   RD_DEPLOY_VENV   virtualenv to create/reuse (default target/deploy-ci-venv)
#   RD_BIN           rewarddance binary for flag defaults and the live check (default: a fresh
#                    target/{debug,release}/rewarddance, else flags are read from the sources)
#   PYTHON           interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
export RD_K8S_VERSION="${RD_K8S_VERSION:-1.30.0}"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy/ci.sh: SKIPPED: kubectl not found (needed for \`kubectl kustomize\`; nothing was checked)"
  echo "0 passed, 0 failed (skipped: no kubectl)"
  exit 0
fi
echo "== kubectl: $(kubectl version --client 2>/dev/null | head -1)"

venv="${RD_DEPLOY_VENV:-target/deploy-ci-venv}"
reqs=deploy/tests/requirements.txt
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "== venv: $venv (installing $(grep -v '^#' "$reqs" | tr '\n' ' '))"
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  if ! "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"; then
    echo "deploy/ci.sh: FAILED: could not install $reqs into $venv"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "$want" > "$stamp"
fi

echo "== render + validate (Kubernetes $RD_K8S_VERSION) + consistency with the code"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
"$venv/bin/python" -m pytest deploy/tests -q -rs -p no:cacheprovider --color=no 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

last="$(grep -E '(passed|failed|error|skipped|no tests ran)' "$log" | tail -1)"
count() { grep -oE "[0-9]+ $1" <<<"$last" | grep -oE '^[0-9]+' || echo 0; }
passed=$(count passed); failed=$(( $(count failed) + $(count error) )); skipped=$(count skipped)
if [[ $rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi   # pytest itself broke (collection, usage)
echo "rendered objects in target/deploy-rendered/"
echo "$passed passed, $failed failed$( ((skipped > 0)) && echo " ($skipped skipped)")"
exit $(( rc == 0 ? 0 : 1 ))
