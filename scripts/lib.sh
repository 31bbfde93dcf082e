# Shared setup for scripts/run and scripts/test: installs what is missing, never more.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# ensure_apt CMD:PACKAGE ... : apt-get installs each PACKAGE whose CMD is missing.
ensure_apt() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# ensure_venv REQUIREMENTS... : creates .venv and pip-installs requirement files that changed.
ensure_venv() {
  [ -x "$VENV/bin/python" ] || { log "creating .venv"; python3 -m venv "$VENV"; }
  local req stamp
  for req in "$@"; do
    stamp="$VENV/.installed-$(basename "$(dirname "$req")")-$(basename "$req")"
    if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
      log "pip install -r ${req#"$ROOT"/}"
      # a requirements file may ask for pip arguments ("# pip-args: ..."); sam2 builds an
      # optional CUDA op when it finds CUDA, which the CPU build skips
      local args
      args=$(sed -n 's/^# pip-args: //p' "$req")
      # shellcheck disable=SC2086
      SAM2_BUILD_CUDA=0 "$VENV/bin/pip" install -q --disable-pip-version-check $args -r "$req"
      cp "$req" "$stamp"
    fi
  done
}

# The onnxruntime shared library shipped by the wheel in .venv (for ORT_DYLIB_PATH).
onnxruntime_lib() {
  ls "$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1* 2>/dev/null | head -n 1
}

# ensure_bundle_weights : for every bundle under models/ whose manifest has [weights], puts the
# verified third-party checkpoint next to its graphs (scripts/model/fetch_weights.py; standard
# library only, cached after the first run). A failed fetch stops with the file and its sha256.
# Then, for a manifest with [int8], builds its CPU int8 graphs from the float graphs and those
# weights (scripts/model/derive_int8.py: onnx + onnxruntime, a few seconds; kept while their
# sources are unchanged; a failure is logged and the engine keeps the float graphs).
ensure_bundle_weights() {
  local m
  for m in "$ROOT"/models/*/manifest.toml; do
    if grep -q '^\[weights\]' "$m" 2>/dev/null; then
      "$VENV/bin/python" "$ROOT/scripts/model/fetch_weights.py" "$(dirname "$m")"
    fi
    if grep -q '^\[int8\]' "$m" 2>/dev/null; then
      "$VENV/bin/python" "$ROOT/scripts/model/derive_int8.py" "$(dirname "$m")" ||
        log "warning: no int8 graphs for $(dirname "$m"); the engine runs its float graphs"
    fi
  done
}

# ensure_viewer : the viewer check's peers (tests/pipeline/viewer_check.rs): Debian chromium, node, npm
# and orthanc-webviewer, and tests/viewer/node_modules from its package-lock.json (npm ci, again
# when the lock changed). The page itself is bundled by the test.
ensure_viewer() {
  ensure_apt chromium:chromium node:nodejs npm:npm
  [ -f /usr/share/orthanc/plugins/libOrthancWebViewer.so ] || {
    log "apt-get install orthanc-webviewer"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
      orthanc-webviewer >/dev/null
  }
  local dir="$ROOT/tests/viewer" stamp="$ROOT/tests/viewer/node_modules/.installed-package-lock.json"
  if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    log "npm ci in tests/viewer"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
  fi
}
