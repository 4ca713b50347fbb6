#!/usr/bin/env bash
# Creates (once) the Python environment of the inference worker and links the repo's .venv to it.
#
# The venv lives in ${I2V_CACHE_DIR:-$HOME/.cache/i2v-server}/venv-<key>, where <key> is the sha256 of
# worker/requirements.lock, the torch variant (cpu or cuda) and the Python version. It is reused while the key is
# unchanged, and rebuilt from nothing otherwise; a marker file written last tells a complete venv from a half-built
# one. The worker package is installed editable from this repo's worker/ directory.
#
# Environment:
#   I2V_CACHE_DIR        cache root (default $HOME/.cache/i2v-server)
#   I2V_PYTHON           interpreter to build the venv with (default python3; 3.11 or newer)
#   I2V_TORCH_VARIANT    cpu or cuda (default: cuda when `nvidia-smi -L` works, else cpu)
#
# Everything it says goes to stderr.
set -euo pipefail

say() { printf 'python-env: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
lock="$repo/worker/requirements.lock"
cache="${I2V_CACHE_DIR:-$HOME/.cache/i2v-server}"
python="${I2V_PYTHON:-python3}"
env_format=1 # bump when the way the venv is built changes

[[ -f "$lock" ]] || die "missing $lock"
command -v "$python" >/dev/null || die "no $python on PATH"
py_version="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]) if sys.version_info >= (3, 11) else sys.exit(1)')" ||
    die "$python is older than 3.11"

variant="${I2V_TORCH_VARIANT:-}"
if [[ -z "$variant" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
fi
[[ "$variant" == cpu || "$variant" == cuda ]] || die "I2V_TORCH_VARIANT must be cpu or cuda, not '$variant'"

torch_version="$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' "$lock")"
[[ -n "$torch_version" ]] || die "no torch== pin in $lock"

key="$({ cat "$lock"; echo "variant=$variant python=$py_version format=$env_format"; } | sha256sum | cut -c1-16)"
venv="$cache/venv-$key"
marker="$venv/.i2v-complete"
link="$repo/.venv"

# The venv is complete and its i2v_worker is this repo's worker/ directory.
ready() {
    [[ -f "$marker" ]] || return 1
    local found
    found="$("$venv/bin/python" -c 'import i2v_worker, os; print(os.path.dirname(os.path.realpath(i2v_worker.__file__)))' 2>/dev/null)" ||
        return 1
    [[ "$found" == "$repo/worker/i2v_worker" ]]
}

link_venv() {
    if [[ -L "$link" ]]; then
        [[ "$(readlink "$link")" == "$venv" ]] && return 0
    elif [[ -e "$link" ]]; then
        die "$link exists and is not a symlink; remove it and run again"
    fi
    ln -sfn "$venv" "$link"
    say "linked $link -> $venv"
}

if ready; then
    link_venv
    say "using $venv ($variant torch $torch_version, Python $py_version)"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/venv-$key.lock"
flock -n 9 || { say "waiting for another python-env.sh (lock $cache/venv-$key.lock)"; flock 9; }

if [[ -f "$marker" ]]; then
    # Complete, but installed from another checkout: point the editable install at this one.
    say "installing the worker package from $repo/worker"
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo/worker" >&2
else
    say "building $venv ($variant torch $torch_version, Python $py_version); this takes a few minutes"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check)
    if [[ "$variant" == cpu ]]; then
        # The CPU build is torch==X+cpu (from pip's find-links, e.g. /opt/wheels); PyPI's plain build also runs on
        # a CPU, but it is the much larger CUDA build.
        if ! "${pip[@]}" install --quiet "torch==$torch_version+cpu" >&2; then
            say "no torch==$torch_version+cpu wheel in pip's find-links; installing PyPI's torch==$torch_version"
            "${pip[@]}" install --quiet "torch===$torch_version" >&2
        fi
    else
        # '===' matches the version string exactly: PyPI's CUDA build, never a local +cpu wheel.
        "${pip[@]}" install --quiet "torch===$torch_version" >&2
    fi
    say "installing $lock"
    "${pip[@]}" install --quiet -r "$lock" >&2
    say "installing the worker package from $repo/worker"
    "${pip[@]}" install --quiet --no-deps --no-build-isolation -e "$repo/worker" >&2
    "$venv/bin/python" -c 'import torch, diffusers, transformers, i2v_worker' ||
        die "the new venv cannot import its packages"
    printf 'key=%s variant=%s python=%s torch=%s\n' "$key" "$variant" "$py_version" "$torch_version" >"$marker"
fi

ready || die "$venv is not usable after installing"
link_venv
say "ready: $venv"
