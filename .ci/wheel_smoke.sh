#!/usr/bin/env bash
# The wheel as a user gets it: built from the checkout's files only (what git tracks or would
# track; no egg-info, no .venv), installed into a FRESH venv next to PyPI's `proxy.py` (which
# owns the top-level name `proxy`), then served and asked one real question.
# uv builds and installs (its cache makes the fresh venv ~5 s, where pip takes ~150 s on this
# machine, mostly index look-ups); the venv still gets only what the wheel's metadata asks for.
#   .ci/wheel_smoke.sh            (needs python3.11 and uv: .ci/run puts uv in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
UV=${UV:-$PWD/.venv/bin/uv}
work=$(mktemp -d -t itsproxy-wheel-XXXXXX)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# 1. A clean copy of the checkout, then the wheel.
mkdir -p "$work/src" "$work/dist" "$work/run"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"
"$UV" build -q --wheel --python "$PY" --out-dir "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/itsproxy-*.whl)
echo "built $(basename "$wheel")"

# 2. A fresh venv: the wheel's own dependencies, and proxy.py beside it.
start=$SECONDS
"$UV" venv -q --python "$PY" "$work/venv"
VIRTUAL_ENV="$work/venv" "$UV" pip install -q "$wheel" proxy.py
echo "fresh venv install: $((SECONDS - start)) s"
VPY="$work/venv/bin/python"

# Everything below runs from an empty directory (the checkout must not be on sys.path), offline.
cd "$work/run"
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_OFFLINE_MODE=true

# 3. Nothing of ours at the top of site-packages; proxy.py's `proxy` is its own.
"$VPY" - <<'EOF'
import importlib.metadata as md, pathlib, sysconfig
site = pathlib.Path(sysconfig.get_paths()["purelib"])
ours = [str(f) for f in md.files("itsproxy") if not str(f).startswith("..")]
stray = [f for f in ours if f.split("/")[0] not in ("itsproxy", f"itsproxy-{md.version('itsproxy')}.dist-info")]
assert not stray, f"the wheel installs outside itsproxy/: {stray[:5]}"
assert not (site / "strategies").exists(), "a top-level strategies/ in site-packages"
theirs = {str(f) for f in md.files("proxy.py")}
assert "proxy/__init__.py" in theirs, "proxy.py no longer installs a top-level proxy package?"
assert (site / "proxy" / "__init__.py").read_bytes() == md.distribution("proxy.py").locate_file("proxy/__init__.py").read_bytes()
import itsproxy.proxy, itsproxy.strategies, itsproxy.proxy.http.app, itsproxy.proxy.telemetry.dashboard, proxy
assert pathlib.Path(itsproxy.proxy.__file__).is_relative_to(site / "itsproxy" / "proxy"), itsproxy.proxy.__file__
assert pathlib.Path(proxy.__file__).is_relative_to(site / "proxy") and hasattr(proxy, "Proxy"), "proxy.py broken"
from importlib.resources import files
static = files("itsproxy.proxy.telemetry") / "static"
for name in ("dashboard.html", "dashboard.js", "dashboard.css", "vendor/uplot/uPlot.iife.min.js"):
    assert (static / name).is_file(), f"static file missing from the wheel: {name}"
print("site-packages: itsproxy/ and proxy.py's proxy/ side by side")
EOF

# 4. Serve the packaged offline demo config (its simulator moved off the fixed port 4101,
#    which a neighbour may hold) from an empty directory, and ask the vote route.
port=$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sim_port=$("$VPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$VPY" - "$work/run/config.yaml" "$sim_port" <<'EOF'
import sys
from importlib.resources import files
text = (files("itsproxy.proxy") / "default_config.yaml").read_text()
assert text.count("4101") == 2, "the default config's simulator port moved: update .ci/wheel_smoke.sh"
open(sys.argv[1], "w").write(text.replace("4101", sys.argv[2]))
EOF
"$work/venv/bin/itsproxy" serve --config config.yaml --port "$port" 2>"$work/serve.log" &
server_pid=$!
"$VPY" - "$port" <<'EOF' || { echo "--- serve log"; cat "$work/serve.log"; exit 1; }
import json, sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 60
while True:
    try:
        if urllib.request.urlopen(f"{base}/health", timeout=2).status == 200:
            break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("itsproxy serve did not become healthy in 60 s")
        time.sleep(0.2)
body = {"model": "math-vote", "messages": [{"role": "user", "content": "What is 17 + 25?"}], "seed": 1}
req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                             {"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as resp:
    status, answer = resp.status, json.load(resp)
assert status == 200, status
its = answer["its"]
assert its["route"] == "math-vote" and its["candidates"] >= 2, its
assert answer["choices"][0]["message"]["content"], answer
print(f"wheel serves: math-vote answered 200 with its={{route: {its['route']}, candidates: {its['candidates']}}}")
EOF
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""

# 5. Uninstalling proxy.py must leave ours intact (it used to delete our files).
VIRTUAL_ENV="$work/venv" "$UV" pip uninstall -q proxy.py
"$VPY" -c "import itsproxy.proxy.cli, itsproxy.proxy.http.app; print('itsproxy intact after uninstalling proxy.py')"
