#!/usr/bin/env bash
# Installs what the project needs, idempotently: Debian packages (Bazel, espeak-ng, ...) and
# the pinned Python environment in .venv/. A second run with nothing changed installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${root}"

python_bin="${PYTHON:-python3.11}"
if ! command -v "${python_bin}" >/dev/null 2>&1; then python_bin=python3; fi

apt_packages=(bazel-bootstrap espeak-ng sox flac)
# Debian's own python3.11 needs python3.11-venv for `-m venv` (a pyenv Python has it built in).
if ! "${python_bin}" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_packages+=(python3.11-venv)
fi
missing=()
for pkg in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("${pkg}")
  fi
done
if (( ${#missing[@]} )); then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root=()
  if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup: error: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
      exit 1
    fi
    as_root=(sudo -n)
  fi
  apt_options=(-o DPkg::Lock::Timeout=300 -qq)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_options[@]}" install -y \
    "${missing[@]}" >/dev/null
fi

if ! "${python_bin}" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
  echo "setup: error: TensorFlow Federated 0.87 needs Python 3.11; ${python_bin} is" \
       "$("${python_bin}" --version 2>&1)" >&2
  exit 1
fi

lock="requirements.lock"
stamp=".venv/.requirements.sha256"
want="$(sha256sum "${lock}" | cut -d' ' -f1)"
venv_ready() { [[ -x .venv/bin/python3 && -f "${stamp}" && "$(cat "${stamp}")" == "${want}" ]]; }
venv_ready && exit 0

# One builder at a time (the demo and the tests may start together).
exec 9>".venv.lock"
flock 9
venv_ready && exit 0
echo "setup: creating .venv from ${lock}"
rm -rf .venv
"${python_bin}" -m venv .venv
.venv/bin/pip install -q --upgrade "pip==23.2.1"
# The lock file holds the whole dependency closure. TFF 0.87 pins jaxlib==0.4.14, which the
# registry does not serve; the lock substitutes 0.4.13, so it is installed without resolution.
.venv/bin/pip install -q --no-deps -r "${lock}"
if ! .venv/bin/python3 -c 'import tensorflow_federated, tensorflow_io, jiwer' ; then
  echo "setup: error: the environment in .venv does not import (see above)" >&2
  exit 1
fi
echo "${want}" > "${stamp}"
echo "setup: .venv ready"
