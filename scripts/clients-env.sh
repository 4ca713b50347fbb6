#!/usr/bin/env bash
# Creates (once) the Python environment of the client tests (integration/clients: the official OpenAI SDK against a
# running server) and links the repo's .venv-clients to it.
#
# It is kept apart from the worker's venv (.venv, scripts/python-env.sh) so the SDK's pins never meet torch's
# and a new SDK version does not rebuild the worker's environment. It lives in
# ${I2V_CACHE_DIR:-$HOME/.cache/i2v-server}/clients-venv-<key>, where <key> is the sha256 of
# integration/clients/requirements.txt and the Python version; a marker file written last tells a complete venv from a
# half-built one.
#
# Environment:
#   I2V_CACHE_DIR   cache root (default $HOME/.cache/i2v-server)
#   I2V_PYTHON      interpreter to build the venv with (default python3; 3.11 or newer)
#
# Everything it says goes to stderr.
set -euo pipefail

say() { printf 'clients-env: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
requirements="$repo/integration/clients/requirements.txt"
cache="${I2V_CACHE_DIR:-$HOME/.cache/i2v-server}"
python="${I2V_PYTHON:-python3}"

[[ -f "$requirements" ]] || die "missing $requirements"
command -v "$python" >/dev/null || die "no $python on PATH"
py_version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]) if sys.version_info >= (3, 11) else sys.exit(1)')" ||
    die "$python is older than 3.11"

key="$({ cat "$requirements"; echo "python=$py_version"; } | sha256sum | cut -c1-16)"
venv="$cache/clients-venv-$key"
marker="$venv/.i2v-complete"
link="$repo/.venv-clients"

if [[ ! -f "$marker" ]]; then
    mkdir -p "$cache"
    exec 9>"$cache/clients-venv-$key.lock"
    flock -n 9 || { say "waiting for another clients-env.sh (lock $cache/clients-venv-$key.lock)"; flock 9; }
    if [[ ! -f "$marker" ]]; then
        say "building $venv (Python $py_version)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip --disable-pip-version-check install --quiet -r "$requirements" >&2
        "$venv/bin/python" -c 'import openai, PIL, pytest, standardwebhooks, httpx_sse, playwright' || die "the new venv cannot import its packages"
        printf 'key=%s python=%s\n' "$key" "$py_version" >"$marker"
    fi
fi

if [[ -L "$link" ]]; then
    [[ "$(readlink "$link")" == "$venv" ]] || ln -sfn "$venv" "$link"
elif [[ -e "$link" ]]; then
    die "$link exists and is not a symlink; remove it and run again"
else
    ln -sfn "$venv" "$link"
fi
say "ready: $venv"
