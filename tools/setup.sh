#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages (Bazel, espeak-ng, ...) and
# the pinned Python environment in .venv/. A second run with nothing changed installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

apt_packages=(bazel-bootstrap espeak-ng sox flac)
missing=()
for pkg in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("${pkg}")
  fi
done
if (( ${#missing[@]} )); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  if [[ "$(id -u)" != 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python_bin="${PYTHON:-python3.11}"
if ! command -v "${python_bin}" >/dev/null 2>&1; then python_bin=python3; fi
if ! "${python_bin}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: error: TensorFlow Federated 0.87 needs Python 3.11; ${python_bin} is $("${python_bin}" --version 2>&1)" >&2
  exit 1
fi

lock="requirements.lock"
stamp=".venv/.requirements.sha256"
want="$(sha256sum "${lock}" | cut -d' ' -f1)"
if [[ -x .venv/bin/python3 && -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; then
  exit 0
fi
echo "setup: creating .venv from ${lock}"
rm -rf .venv
"${python_bin}" -m venv .venv
.venv/bin/pip install -q --upgrade "pip==23.2.1"
# The lock file holds the whole dependency closure. TFF 0.87 pins jaxlib==0.4.14, which the
# registry does not serve; the lock substitutes 0.4.13, so it is installed without resolution.
.venv/bin/pip install -q --no-deps -r "${lock}"
.venv/bin/python3 -c 'import tensorflow_federated, tensorflow_io' 2>/dev/null || {
  echo "setup: error: the environment in .venv does not import tensorflow_federated" >&2
  exit 1
}
echo "${want}" > "${stamp}"
echo "setup: .venv ready"
