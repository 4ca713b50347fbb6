#!/usr/bin/env bash
# Puts the Swagger UI dist files (swagger-ui-bundle.js, swagger-ui.css, swagger-ui-standalone-preset.js, favicons,
# oauth2-redirect.html, …) into the repo's .swagger-ui/, so that /docs works offline.
#
# They come from the PyPI wheel of flask-swagger-ui, which carries Swagger UI's dist folder at the same version
# (flask-swagger-ui 5.34.0 carries Swagger UI v5.34.0). The wheel is downloaded once into the cache dir with
# `pip download --no-deps`; only its dist folder is unpacked. Nothing runs if .swagger-ui/ already holds this version.
#
# Environment:
#   I2V_CACHE_DIR   cache root (default $HOME/.cache/i2v-server)
#   I2V_PYTHON      interpreter whose pip downloads the wheel (default python3)
set -euo pipefail

say() { printf 'fetch-swagger-ui: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

version=5.34.0 # flask-swagger-ui, and so Swagger UI
sha256=63e4ecfee6345ca746c11c5341c6f2a1cbe271e518aac1659889cd3905b1110f # of its wheel on PyPI
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
target="$repo/.swagger-ui"
stamp="$target/.flask-swagger-ui-version"
cache="${I2V_CACHE_DIR:-$HOME/.cache/i2v-server}/wheels"
python="${I2V_PYTHON:-python3}"
required=(swagger-ui-bundle.js swagger-ui.css swagger-ui-standalone-preset.js favicon-32x32.png favicon-16x16.png)

complete() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$version" ]] || return 1
    local f
    for f in "${required[@]}"; do [[ -s "$target/$f" ]] || return 1; done
}

if complete; then
    say "Swagger UI $version already in $target"
    exit 0
fi

mkdir -p "$cache"
wheel="$cache/flask_swagger_ui-$version-py3-none-any.whl"
if [[ ! -s "$wheel" ]]; then
    say "downloading flask-swagger-ui==$version into $cache"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$cache" "flask-swagger-ui==$version" >&2
    [[ -s "$wheel" ]] || die "pip did not leave $wheel"
fi
if [[ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$sha256" ]]; then
    rm -f "$wheel"
    die "$wheel does not have the expected sha256 $sha256 (removed; run again)"
fi

# Unpack the dist folder into a temporary directory (in the cache, so nothing stray is left in the repo), then
# swap it in whole; complete() also checks the files, should a move across file systems be cut short.
tmp="$(mktemp -d "$cache/swagger-ui.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
"$python" - "$wheel" "$tmp" <<'PY'
import sys, zipfile
from pathlib import PurePosixPath

wheel, dest = sys.argv[1], sys.argv[2]
prefix = PurePosixPath("flask_swagger_ui/dist")
count = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = PurePosixPath(info.filename)
        if info.is_dir() or path.parent != prefix:  # only the files directly in dist/, by their bare names
            continue
        with z.open(info) as src, open(f"{dest}/{path.name}", "wb") as out:
            out.write(src.read())
        count += 1
if count == 0:
    sys.exit(f"no {prefix}/ files in {wheel}")
PY
for f in "${required[@]}"; do [[ -s "$tmp/$f" ]] || die "$f missing from the flask-swagger-ui $version wheel"; done
printf '%s\n' "$version" >"$tmp/.flask-swagger-ui-version"
chmod 755 "$tmp"
rm -rf "$target"
mv "$tmp" "$target"
trap - EXIT
say "Swagger UI $(cat "$target/VERSION" 2>/dev/null || echo "$version") unpacked into $target"
