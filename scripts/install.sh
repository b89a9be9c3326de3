#!/usr/bin/env bash
# Install edgewatch from this checkout as a systemd service:
#   /opt/edgewatch/venv        the package and its dependencies (console script: venv/bin/edgewatch)
#   /opt/edgewatch/models      the ONNX model (the demo COCO detector unless --model is given)
#   /etc/systemd/system        edgewatch.service (+ edgewatch.service.d/cpu.conf on CPU-only hosts), and
#                              edgewatch@.service for more daemons on one host (edgewatch@NAME: NAME.toml)
#   /etc/sysusers.d, /etc/tmpfiles.d   the edgewatch user, /var/lib/edgewatch, the credential file
#   /etc/edgewatch             config.toml (only if absent), edgewatch.env.example, roboflow_api_key
#
# Usage: sudo scripts/install.sh [--flavour auto|cpu|gpu|jetson] [--model PATH | --no-model]
#                                [--prefix DIR] [--python PY] [--destdir DIR]
#   --flavour  which onnxruntime/OpenCV to use. auto (default): jetson on a Jetson (/etc/nv_tegra_release),
#              gpu where an NVIDIA driver is loaded, else cpu. jetson keeps JetPack's own onnxruntime-gpu
#              and OpenCV (GStreamer, hardware decode) through --system-site-packages.
#   --model    copy this .onnx instead of the demo model (built with models/build.py if not built yet)
#   --prefix   where the venv, models and docs go (default /opt/edgewatch)
#   --python   the interpreter the venv is made from (default python3; 3.10 or newer)
#   --destdir  stage every file under this folder instead of /, and touch nothing on the machine: no users,
#              no systemctl (for packaging, and for the tests). Also read from $DESTDIR.
# pip honours its own environment (PIP_INDEX_URL, PIP_NO_DEPS, ...).
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
flavour=auto
prefix=/opt/edgewatch
python=python3
model=""
want_model=1
destdir=${DESTDIR:-}

die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --flavour) flavour=${2:?--flavour needs a value}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --python) python=${2:?--python needs a value}; shift 2 ;;
        --model) model=${2:?--model needs a path}; shift 2 ;;
        --no-model) want_model=0; shift ;;
        --destdir) destdir=${2:?--destdir needs a folder}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$prefix" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
if [ -n "$destdir" ]; then
    mkdir -p "$destdir"
    destdir=$(cd "$destdir" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (or stage with --destdir DIR)"
fi
[ -z "$model" ] || [ -f "$model" ] || die "--model $model: no such file"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "$python: Python 3.10 or newer is needed (--python PY)"

if [ "$flavour" = auto ]; then
    if [ -e /etc/nv_tegra_release ]; then
        flavour=jetson
    elif [ -e /proc/driver/nvidia/version ]; then
        flavour=gpu
    else
        flavour=cpu
    fi
fi
case "$flavour" in cpu|gpu|jetson) ;; *) die "--flavour must be auto, cpu, gpu or jetson" ;; esac

root=$destdir
venv=$root$prefix/venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "flavour $flavour: creating $venv"
if [ "$flavour" = jetson ]; then
    "$python" -m venv --system-site-packages "$venv"
else
    "$python" -m venv "$venv"
fi

# pip builds a local project in place: build from a copy so the checkout stays as it was.
mkdir "$work/src"
cp -R "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/daemon" "$work/src/"
# JetPack's onnxruntime-gpu and OpenCV come from the system and were built against numpy 1.x: keep the
# exact pins of everything else, none of those three.
if [ "$flavour" = jetson ]; then
    grep -vE '^(numpy|onnxruntime|opencv)' "$SRC/constraints.txt" > "$work/constraints.txt"
    echo 'numpy>=1.26,<2' >> "$work/constraints.txt"
    requirement=$work/src
else
    cp "$SRC/constraints.txt" "$work/constraints.txt"
    requirement="$work/src[$flavour]"
fi
step "installing edgewatch ($flavour) and its dependencies"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --constraint "$work/constraints.txt" "$requirement"
# the tracker asks for opencv-python, which would clash with the headless build or JetPack's OpenCV
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --constraint "$work/constraints.txt" trackers
if [ "$flavour" = jetson ] && ! "$venv/bin/python" -c 'import onnxruntime, cv2' 2>/dev/null; then
    echo "warning: onnxruntime or cv2 is missing: install NVIDIA's onnxruntime-gpu wheel for this JetPack" >&2
    echo "         and JetPack's OpenCV with GStreamer: apt-get install libopencv-python" >&2
fi

models=$root$prefix/models
if [ "$want_model" -eq 1 ]; then
    mkdir -p "$models"
    if [ -n "$model" ]; then
        step "copying the model $model"
        install -m 0644 "$model" "$models/$(basename "$model")"
    else
        demo=$SRC/models/yolov3-tiny-coco.onnx
        if [ ! -f "$demo" ]; then
            # onnx is needed only to build it: a throwaway venv keeps it out of the service's.
            step "building the demo model (models/build.py)"
            "$python" -m venv "$work/build"
            "$work/build/bin/python" -m pip install --quiet --disable-pip-version-check \
                --constraint "$SRC/constraints.txt" numpy onnx
            "$work/build/bin/python" "$SRC/models/build.py" --out "$work/yolov3-tiny-coco.onnx" \
                --cache-dir "$work/cache"
            demo=$work/yolov3-tiny-coco.onnx
        fi
        install -m 0644 "$demo" "$models/yolov3-tiny-coco.onnx"
    fi
fi

step "installing the unit, the user and the folders"
relocate() { sed "s|/opt/edgewatch|$prefix|g" "$1"; }
mkdir -p "$root/etc/systemd/system" "$root/etc/sysusers.d" "$root/etc/tmpfiles.d" "$root/etc/edgewatch" \
    "$root$prefix/docs"
relocate "$SRC/systemd/edgewatch.service" > "$root/etc/systemd/system/edgewatch.service"
# edgewatch@NAME: one more daemon on this host (docs/operators.md), the same unit with its own config file
# and state folder
{
    echo "# edgewatch@NAME: edgewatch.service for one more daemon on this host, written by scripts/install.sh:"
    echo "# config /etc/edgewatch/NAME.toml, state /var/lib/edgewatch-NAME (docs/operators.md)."
    relocate "$SRC/systemd/edgewatch.service" | sed \
        -e 's|^\(Description=.*\)$|\1 (%i)|' \
        -e 's|/etc/edgewatch/config\.toml|/etc/edgewatch/%i.toml|g' \
        -e 's|/var/lib/edgewatch|/var/lib/edgewatch-%i|g' \
        -e 's|^StateDirectory=edgewatch$|StateDirectory=edgewatch-%i|' \
        -e 's|\(systemctl [a-z-]*\) edgewatch\b|\1 edgewatch@NAME|g' \
        -e 's|\(systemd-analyze security\) edgewatch\b|\1 edgewatch@NAME|g'
} > "$root/etc/systemd/system/edgewatch@.service"
if [ "$flavour" = cpu ]; then
    for unit in edgewatch edgewatch@; do
        mkdir -p "$root/etc/systemd/system/$unit.service.d"
        install -m 0644 "$SRC/systemd/edgewatch-cpu.conf" "$root/etc/systemd/system/$unit.service.d/cpu.conf"
    done
fi
install -m 0644 "$SRC/systemd/edgewatch.sysusers" "$root/etc/sysusers.d/edgewatch.conf"
install -m 0644 "$SRC/systemd/edgewatch.tmpfiles" "$root/etc/tmpfiles.d/edgewatch.conf"
install -m 0644 "$SRC/systemd/edgewatch.env.example" "$root/etc/edgewatch/edgewatch.env.example"
install -m 0644 "$SRC/docs/operators.md" "$root$prefix/docs/operators.md"
if [ -e "$root/etc/edgewatch/config.toml" ]; then
    step "kept the existing /etc/edgewatch/config.toml"
else
    relocate "$SRC/systemd/config.example.toml" > "$root/etc/edgewatch/config.toml"
fi

if [ -n "$destdir" ]; then
    step "staged under $destdir; on the target machine run:"
    echo "    systemd-sysusers /etc/sysusers.d/edgewatch.conf"
    echo "    systemd-tmpfiles --create /etc/tmpfiles.d/edgewatch.conf"
    echo "    systemctl daemon-reload"
    exit 0
fi

systemd-sysusers /etc/sysusers.d/edgewatch.conf
systemd-tmpfiles --create /etc/tmpfiles.d/edgewatch.conf
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

cat <<EOF

edgewatch is installed ($flavour). Next:
  1. Edit /etc/edgewatch/config.toml: device id, cameras, MQTT broker (docs: $prefix/docs/operators.md).
  2. Put the Roboflow API key in /etc/edgewatch/roboflow_api_key (root-only file, read as a credential),
     other secrets (MQTT_PASSWORD, ...) in /etc/edgewatch/edgewatch.env (see edgewatch.env.example).
  3. Check it as the service will run it:
       sudo -u edgewatch $prefix/venv/bin/edgewatch check -c /etc/edgewatch/config.toml
  4. Start it now and at every boot:   systemctl enable --now edgewatch
     Follow it:                         journalctl -u edgewatch -f;  systemctl status edgewatch
     Metrics and health:                curl -s localhost:9108/metrics;  curl -s localhost:9108/healthz
EOF
