#!/usr/bin/env bash
# Summary: Read-only capture of one host's facts into a snapshot, streamed as base64(tar.gz) on stdout.
#
# Usage: bash capture.sh [HF_CACHE] [IMAGE] [SCOPE]   (or: ssh HOST bash -s -- HF_CACHE IMAGE SCOPE < capture.sh)
#
# SCOPE "fabric" captures only what the start's fabric gate and NCCL discovery read (names, kernel, GPU,
# addresses, routes, sysfs net and infiniband): no docker, memory, ports, limits, ethtool or HF cache, which
# the start's preflight probe asks for itself. Anything else (the default) captures everything.
#
# Writes nothing outside a private temp dir, which it removes. Never reads the environment,
# shell history, tokens or keys. Layout: sys/... and proc/... mirror the real paths, cmd/NAME
# holds command outputs, cmd/exit-codes.txt holds "NAME RC" lines (127 = command missing).
set -uo pipefail
export LC_ALL=C
hf_cache="${1:-}"
image="${2:-}"
scope="${3:-all}"
out="$(mktemp -d "${TMPDIR:-/tmp}/spark-capture.XXXXXX")" || exit 1
trap 'rm -rf "$out"' EXIT
mkdir -p "$out/cmd" "$out/proc/net" "$out/sys/class/net" "$out/sys/class/infiniband" "$out/etc"

# Files and directories are written at the end (write_all), with ONE mkdir: a capture reads hundreds of
# files in dozens of directories, and each fork costs ~5-10 ms on a busy node.
declare -A dirs=() copied=()
declare -a paths=() values=()

# copy_file SRC: copy one small file to the same path under the snapshot, if it reads.
copy_file() {
  local value=""
  [[ -r "$1" ]] || return 0
  # sysfs attributes (hundreds of one-line files) by the `read` builtin: no fork each (`$(cat)` cost ~5 ms
  # apiece on a busy node). It stops at end of file with status 1, so an empty result is asked again of cat,
  # to tell "empty" from "unreadable" (sysfs answers EINVAL for some attributes) as before.
  if [[ "$1" == /sys/* ]]; then IFS= read -r -d '' value 2>/dev/null <"$1"; fi
  if [[ -z "$value" ]]; then value="$(cat "$1" 2>/dev/null)" || return 0; fi
  while [[ "$value" == *$'\n' ]]; do value="${value%$'\n'}"; done
  dirs["$out${1%/*}"]=1
  copied["$1"]=1
  paths+=("$out$1")
  values+=("$value")
}

# mark_dir PATH: an empty directory in the snapshot (a marker such as wireless/ or device/).
mark_dir() { dirs["$out$1"]=1; }

write_all() {
  local i
  if ((${#dirs[@]})); then mkdir -p "${!dirs[@]}"; fi
  for i in "${!paths[@]}"; do printf '%s\n' "${values[$i]}" >"${paths[$i]}"; done
}

# record NAME CMD...: stdout to cmd/NAME, stderr to cmd/NAME.err (when not empty), exit code noted.
record() {
  local name="$1" rc
  shift
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "$name 127" >>"$out/cmd/exit-codes.txt"
    return 0
  fi
  timeout 20 "$@" >"$out/cmd/$name" 2>"$out/cmd/$name.err"
  rc=$?
  echo "$name $rc" >>"$out/cmd/exit-codes.txt"
  [[ -s "$out/cmd/$name.err" ]] || rm -f "$out/cmd/$name.err"
}

# Strip credentials that docker info can carry (proxy URLs with user:password, proxy settings).
redact() {
  sed -E 's#"(HttpProxy|HttpsProxy|NoProxy)":"[^"]*"#"\1":"<redacted>"#g; s#://[^/@"[:space:]]*@#://<redacted>@#g'
}

echo "1" >"$out/cmd/format-version.txt"
echo "$scope" >"$out/cmd/scope.txt"
uname -n >"$out/cmd/hostname.txt"
record uname-r.txt uname -r
if [[ "$scope" != fabric ]]; then
  record id.txt id
  copy_file /proc/meminfo
  copy_file /proc/net/tcp
  copy_file /proc/net/tcp6
  copy_file /etc/os-release
  ulimit -l >"$out/cmd/ulimit-l.txt" 2>/dev/null
fi
record ip-addr.json ip -j addr
record ip-route.json ip -j route
# The slowest tools run while the sysfs trees are read (waited for before the snapshot is packed).
record nvidia-smi.csv nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader &
record ibdev2netdev.txt ibdev2netdev &
if [[ -d /dev/infiniband ]]; then ls -1 /dev/infiniband >"$out/cmd/dev-infiniband.txt" 2>/dev/null; fi

for dev in /sys/class/net/*; do
  name="${dev##*/}"
  for f in mtu operstate speed address carrier type; do copy_file "$dev/$f"; done
  for marker in wireless bridge device; do
    [[ -e "$dev/$marker" ]] && mark_dir "$dev/$marker"
  done
  [[ -d "$dev/device" && -e "$dev/device/infiniband" ]] && mark_dir "$dev/device/infiniband"
  case "$name" in
    en* | eth*) [[ -e "$dev/device" && "$scope" != fabric ]] && record "ethtool-$name.txt" ethtool "$name" ;;
  esac
done

for hca in /sys/class/infiniband/*; do
  [[ -d "$hca" ]] || continue
  for f in node_type fw_ver board_id; do copy_file "$hca/$f"; done
  for nd in "$hca"/device/net/*; do [[ -e "$nd" ]] && mark_dir "$nd"; done
  for port in "$hca"/ports/*; do
    [[ -d "$port" ]] || continue
    for f in state phys_state link_layer rate; do copy_file "$port/$f"; done
    for gid in "$port"/gids/*; do
      idx="${gid##*/}"
      value=""
      read -r value <"$gid" 2>/dev/null || continue
      # Unused table entries are all zeros; their attributes do not even read.
      [[ "$value" == "0000:0000:0000:0000:0000:0000:0000:0000" || -z "$value" ]] && continue
      copy_file "$gid"
      copy_file "$port/gid_attrs/types/$idx"
      copy_file "$port/gid_attrs/ndevs/$idx"
    done
    # Emulated HCAs may carry only gid_attrs/ndevs (no gid table): keep the netdev link.
    for nd in "$port"/gid_attrs/ndevs/*; do
      [[ -n "${copied[$nd]:-}" ]] || copy_file "$nd"
    done
  done
done

if [[ "$scope" == fabric ]]; then
  : # the start's preflight probe asks Docker itself
elif command -v docker >/dev/null 2>&1; then
  timeout 20 docker info --format '{{json .}}' 2>"$out/cmd/docker-info.json.err" | redact >"$out/cmd/docker-info.json"
  echo "docker-info.json ${PIPESTATUS[0]}" >>"$out/cmd/exit-codes.txt"
  [[ -s "$out/cmd/docker-info.json.err" ]] || rm -f "$out/cmd/docker-info.json.err"
  if [[ -n "$image" ]]; then
    record docker-image-id.txt docker image inspect --format '{{.Id}}' "$image"
  fi
else
  echo "docker-info.json 127" >>"$out/cmd/exit-codes.txt"
fi

if [[ -n "$hf_cache" && "$scope" != fabric ]]; then
  echo "$hf_cache" >"$out/cmd/hf-cache-path.txt"
  probe="$hf_cache"
  while [[ ! -e "$probe" && "$probe" != "/" && -n "$probe" ]]; do probe="$(dirname "$probe")"; done
  echo "$probe" >"$out/cmd/hf-cache-existing.txt"
  record df-hf-cache.txt df -PB1 "$probe"
  record stat-hf-cache.txt stat -c '%U %u %a' "$probe"
  if [[ "$probe" == "$hf_cache" ]]; then
    find "$hf_cache" -maxdepth 3 ! -user "$(id -u)" -print 2>/dev/null | head -n 5 >"$out/cmd/hf-cache-foreign.txt"
  fi
fi

wait
write_all
tar -C "$out" -czf - . | base64
