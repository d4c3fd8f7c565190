#!/usr/bin/env bash
# FleetBoard side by side with the userspace tunnels it competes with (issue 9). As root:
#
#   perf/run.sh                 # full: 3 runs per case, 10 s per iperf3 test; writes
#                               # perf/RESULTS.md (harness section), perf/results.json, perf/results.png
#   perf/run.sh --quick         # 1 run, 3 s per test, output in /tmp/fleetboard-perf (iteration)
#   perf/run.sh --quick --cases "raw fb-wg"   # only some cases
#   options: --runs N --duration S --udp-rate 300M --out DIR --cases "..." --no-build
#   --profile: `perf record` the tunnel processes during the 1-stream TCP test of the first
#              run; the flat profile goes to OUT/profile-CASE.txt
#   FLEETBOARD=path/to/fleetboard perf/run.sh ...   # measure another build (before/after)
#
# Builds everything first: fleetboard, perf-probe and perf-report (release, into
# $CARGO_TARGET_DIR or target/), wireguard-go (newest, Go module proxy) and boringtun-cli 0.7.x
# (crates.io), both cached by version under ~/.cache/fleetboard/tools (perf/tools.sh).
#
# Topology, new for every case and run: namespaces A and B on one veth (198.18.0.1 <-> .2),
# tunnel addresses 100.64.1.1 (A) and 100.64.2.1 (B); the relay case puts a hub namespace H
# between them (A 198.18.1.1 <-> H .2, B 198.18.2.1 <-> H .2; hub tunnel address 100.64.0.1).
# Cases: raw (no tunnel), fb-wg, fb-quic, fb-wg-relay (members' own session, the hub forwards
# ciphertext), fb-wg-hub-decrypt (the hub decrypts and re-encrypts), wireguard-go, boringtun. Per case and
# run, from A to B: perf-probe RTT (p50/p99), iperf3 TCP 1 and 4 streams, iperf3 UDP at a fixed
# rate (loss); CPU of the tunnel processes (/proc/<pid>/stat), RSS (VmRSS idle, VmHWM peak),
# nstat UdpRcvbufErrors, TCP retransmits. Benchmark only: no pass/fail, it prints figures.
set -euo pipefail
umask 077 # keys
cd "$(dirname "$0")/.."
ROOT="$PWD"

RUNS=3 DURATION=10 UDP_RATE=300M OUT="" QUICK=0 NO_BUILD=0 PROFILE=0
CASES="raw fb-wg fb-quic fb-wg-relay fb-wg-hub-decrypt wireguard-go boringtun"
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 RUNS=1 DURATION=3 ;;
        --runs) RUNS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --udp-rate) UDP_RATE="$2"; shift ;;
        --cases) CASES="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-build) NO_BUILD=1 ;;
        --profile) PROFILE=1 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$OUT" ] || { [ "$QUICK" = 1 ] && OUT=/tmp/fleetboard-perf || OUT="$ROOT/perf"; }
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (network namespaces, TUN devices)" >&2; exit 1; }
scripts/install-deps.sh >&2 # iperf3, wireguard-tools (wg), iproute2 (nstat), fonts for the chart

# --- build ---------------------------------------------------------------------------------
TGT="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$NO_BUILD" = 0 ]; then
    echo "run.sh: building fleetboard, perf-probe, perf-report (release)" >&2
    cargo build --release -p fleetboard -p fleetboard-perf >&2
fi
FB="$(realpath "${FLEETBOARD:-$TGT/release/fleetboard}")" PROBE="$TGT/release/perf-probe" REPORT="$TGT/release/perf-report"
source perf/tools.sh
case " $CASES " in *" wireguard-go "*) tools_wireguard_go ;; esac
case " $CASES " in *" boringtun "*) tools_boringtun ;; esac

mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/fbperf.XXXXXX)"
RUNLOG="$WORK/runs.jsonl"
: >"$RUNLOG"
T="p$$"
NA="fbp-a-$T" NB="fbp-b-$T" NH="fbp-h-$T"
PIDS=""

teardown() {
    local ns p
    for ns in "$NA" "$NB" "$NH"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
    done
    sleep 0.3
    for ns in "$NA" "$NB" "$NH"; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f /var/run/wireguard/wa"$T".sock /var/run/wireguard/wb"$T".sock
    PIDS=""
}
trap 'teardown; rm -rf "$WORK"' EXIT

# --- topology ------------------------------------------------------------------------------
ns_new() { ip netns add "$1"; ip -n "$1" link set lo up; }
link() { # link NS1 DEV1 ADDR1 NS2 DEV2 ADDR2
    ip link add "t$T" netns "$1" type veth peer name "u$T" netns "$4"
    ip -n "$1" link set "t$T" name "$2"
    ip -n "$4" link set "u$T" name "$5"
    ip -n "$1" addr add "$3" dev "$2"
    ip -n "$4" addr add "$6" dev "$5"
    ip -n "$1" link set "$2" up
    ip -n "$4" link set "$5" up
}
net_direct() {
    ns_new "$NA"; ns_new "$NB"
    link "$NA" eth0 198.18.0.1/24 "$NB" eth0 198.18.0.2/24
}
net_relay() {
    ns_new "$NA"; ns_new "$NB"; ns_new "$NH"
    link "$NA" eth0 198.18.1.1/24 "$NH" eth1 198.18.1.2/24
    link "$NB" eth0 198.18.2.1/24 "$NH" eth2 198.18.2.2/24
    ip netns exec "$NH" sysctl -qw net.ipv4.ip_forward=0
}

# --- tunnels -------------------------------------------------------------------------------
start() { # start NS LOG CMD...: runs a tunnel process in NS, remembers its pid
    local ns="$1" log="$2"
    shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 &
    PIDS="$PIDS $!"
}

fb_keys() { local n; for n in "$@"; do "$FB" keygen >"$WORK/$n.key"; "$FB" pubkey <"$WORK/$n.key" >"$WORK/$n.pub"; done; }
fb_quic() { # fb_quic NAME: identity files; sets QUIC_LINE and FP_FIELD
    local fp
    fp=$("$FB" quic-identity --name "$1" --dir "$WORK/$1-quic")
    QUIC_LINE="transport: quic
quic: { certificate: \"$WORK/$1-quic/quic.crt\", private_key: \"$WORK/$1-quic/quic.key\" }"
    FP_FIELD=", fingerprint: \"$fp\""
}

# fleetboard, A <-> B directly; $1 = wg | quic.
up_fb_direct() {
    local transport="$1" port=31820 qa="" qb="" fa="" fb=""
    net_direct
    fb_keys a b
    if [ "$transport" = quic ]; then
        port=31821
        fb_quic a; qa="$QUIC_LINE"; fa="$FP_FIELD"
        fb_quic b; qb="$QUIC_LINE"; fb="$FP_FIELD"
    fi
    cat >"$WORK/a.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.1.1/10"] }
private_key: "$(cat "$WORK/a.key")"
admin: { socket: "$WORK/a.sock" }
$qa
peers:
  - { name: b, public_key: "$(cat "$WORK/b.pub")", endpoint: "198.18.0.2:$port", allowed_ips: ["100.64.2.0/24"], persistent_keepalive: 5$fb }
YAML
    cat >"$WORK/b.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.2.1/10"] }
private_key: "$(cat "$WORK/b.key")"
admin: { socket: "$WORK/b.sock" }
$qb
peers:
  - { name: a, public_key: "$(cat "$WORK/a.pub")", endpoint: "198.18.0.1:$port", allowed_ips: ["100.64.1.0/24"]$fa }
YAML
    start "$NB" "$WORK/b.log" "$FB" dataplane --config "$WORK/b.yaml"
    start "$NA" "$WORK/a.log" "$FB" dataplane --config "$WORK/a.yaml"
}

# fleetboard wg, A -> hub H -> B. $1 = e2e: A and B keep a session with each other and the
# hub forwards their ciphertext (relay: true, `via`; what the agents configure for wg members);
# $1 = decrypt: the hub decrypts and re-encrypts (what a quic member's traffic gets).
up_fb_relay() {
    local mode="$1" relay="" via_a="" via_b=""
    net_relay
    fb_keys a b h
    if [ "$mode" = e2e ]; then
        relay="relay: true"
        via_a="  - { name: b, public_key: \"$(cat "$WORK/b.pub")\", via: \"$(cat "$WORK/h.pub")\", allowed_ips: [\"100.64.2.0/24\"], persistent_keepalive: 5 }"
        via_b="  - { name: a, public_key: \"$(cat "$WORK/a.pub")\", via: \"$(cat "$WORK/h.pub")\", allowed_ips: [\"100.64.1.0/24\"], persistent_keepalive: 5 }"
    fi
    cat >"$WORK/h.yaml" <<YAML
interface: { name: fb0, addresses: ["100.64.0.1/10"] }
private_key: "$(cat "$WORK/h.key")"
admin: { socket: "$WORK/h.sock" }
$relay
peers:
  - { name: a, public_key: "$(cat "$WORK/a.pub")", allowed_ips: ["100.64.1.0/24"] }
  - { name: b, public_key: "$(cat "$WORK/b.pub")", allowed_ips: ["100.64.2.0/24"] }
YAML
    local n addr hub via
    for n in a b; do
        [ "$n" = a ] && addr=100.64.1.1 hub=198.18.1.2 via="$via_a" || addr=100.64.2.1 hub=198.18.2.2 via="$via_b"
        cat >"$WORK/$n.yaml" <<YAML
interface: { name: fb0, addresses: ["$addr/10"] }
private_key: "$(cat "$WORK/$n.key")"
admin: { socket: "$WORK/$n.sock" }
peers:
  - { name: hub, public_key: "$(cat "$WORK/h.pub")", endpoint: "$hub:31820", allowed_ips: ["100.64.0.0/10"], persistent_keepalive: 5 }
$via
YAML
    done
    start "$NH" "$WORK/h.log" "$FB" dataplane --config "$WORK/h.yaml"
    start "$NB" "$WORK/b.log" "$FB" dataplane --config "$WORK/b.yaml"
    start "$NA" "$WORK/a.log" "$FB" dataplane --config "$WORK/a.yaml"
}

# A kernel-API tunnel configured with `wg`: $1 = wireguard-go | boringtun.
up_wg_tool() {
    local tool="$1" n ns ifc addr peer_ep peer_ip
    net_direct
    for n in a b; do wg genkey >"$WORK/$n.key"; wg pubkey <"$WORK/$n.key" >"$WORK/$n.pub"; done
    for n in a b; do
        ns="$NA" ifc="wa$T" addr=100.64.1.1 peer_ep=198.18.0.2 peer_ip=100.64.2.0/24 peer=b
        [ "$n" = b ] && ns="$NB" ifc="wb$T" addr=100.64.2.1 peer_ep=198.18.0.1 peer_ip=100.64.1.0/24 peer=a
        case "$tool" in
            wireguard-go) start "$ns" "$WORK/$n.log" env WG_PROCESS_FOREGROUND=1 "$WGGO" -f "$ifc" ;;
            boringtun) start "$ns" "$WORK/$n.log" "$BORINGTUN" --foreground --disable-drop-privileges "$ifc" ;;
        esac
        local _
        for _ in $(seq 1 100); do [ -S "/var/run/wireguard/$ifc.sock" ] && break; sleep 0.1; done
        ip netns exec "$ns" wg set "$ifc" private-key "$WORK/$n.key" listen-port 51820 \
            peer "$(cat "$WORK/$peer.pub")" endpoint "$peer_ep:51820" allowed-ips "$peer_ip"
        ip -n "$ns" link set "$ifc" mtu 1420
        ip -n "$ns" addr add "$addr/10" dev "$ifc"
        ip -n "$ns" link set "$ifc" up
    done
}

# Brings case $1 up; sets DST (B's address as seen from A).
case_up() {
    case "$1" in
        raw) net_direct; DST=198.18.0.2 ;;
        fb-wg) up_fb_direct wg; DST=100.64.2.1 ;;
        fb-quic) up_fb_direct quic; DST=100.64.2.1 ;;
        fb-wg-relay) up_fb_relay e2e; DST=100.64.2.1 ;;
        fb-wg-hub-decrypt) up_fb_relay decrypt; DST=100.64.2.1 ;;
        wireguard-go | boringtun) up_wg_tool "$1"; DST=100.64.2.1 ;;
        *) echo "run.sh: unknown case $1" >&2; exit 2 ;;
    esac
    local _
    for _ in $(seq 1 120); do
        ip netns exec "$NA" ping -c1 -W1 "$DST" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "run.sh: $1: no connectivity A -> $DST" >&2
    tail -n 20 "$WORK"/*.log >&2 || true
    return 1
}

# --- measurements --------------------------------------------------------------------------
emit() { # emit METRIC VALUE (nothing when the value is missing)
    case "${2:-}" in "" | null | None) return 0 ;; esac
    printf '{"case":"%s","run":%s,"metric":"%s","value":%s}\n' "$CASE" "$RUN" "$1" "$2" >>"$RUNLOG"
}
cpu_ticks() { local p t=0; for p in $PIDS; do t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}'))); done; echo "$t"; }
# sched_sum: the tunnel processes' (all threads') /proc/PID/task/*/schedstat summed: ns on a
# CPU, ns waiting on a run queue, times scheduled in.
sched_sum() { local p; for p in $PIDS; do cat /proc/"$p"/task/*/schedstat; done | awk '{r += $1; w += $2; n += $3} END {printf "%d %d %d\n", r, w, n}'; }
rss_max() { local p v m=0; for p in $PIDS; do v=$(awk -v k="$1:" '$1 == k {print $2}' "/proc/$p/status"); [ "${v:-0}" -gt "$m" ] && m=$v; done; echo "$m"; }
rcvbuf() { local ns t=0; for ns in "$NA" "$NB" "$NH"; do ip netns list | grep -q "^$ns" || continue; t=$((t + $(ip netns exec "$ns" nstat -asz UdpRcvbufErrors Udp6RcvbufErrors | awk '!/^#/ {s += $2} END {print s + 0}'))); done; echo "$t"; }
jget() { python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d.get(k, {}) if isinstance(d, dict) else {}
print(d if d != {} else "null")' "$1" "$2"; }

iperf() { # iperf NAME ARGS...: client in A against a one-off server in B; JSON in $WORK/NAME.json
    local name="$1" port=$((5201 + RANDOM % 500)) srv _
    shift
    ip netns exec "$NB" iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    srv=$!
    for _ in $(seq 1 50); do ip netns exec "$NB" ss -lnH 2>/dev/null | grep -q ":$port " && break; sleep 0.1; done
    ip netns exec "$NA" iperf3 -c "$DST" -p "$port" -t "$DURATION" -J "$@" >"$WORK/$name.json" || true
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
}

measure() {
    local port=$((7000 + RANDOM % 500)) tck cpu0 cpu1 rb0 rb1 b1 b4 probe _
    tck=$(getconf CLK_TCK)
    sleep 1
    emit rss_idle_mib "$(awk -v k="$(rss_max VmRSS)" 'BEGIN {printf "%.2f", k / 1024}')"
    # RTT
    ip netns exec "$NB" "$PROBE" server --listen "$DST:$port" >/dev/null 2>&1 &
    probe=$!
    sleep 0.2
    local count=2000
    [ "$QUICK" = 1 ] && count=500
    local s0 s1
    s0=$(sched_sum)
    ip netns exec "$NA" "$PROBE" client --to "$DST:$port" --count "$count" >"$WORK/rtt.json"
    s1=$(sched_sum)
    kill "$probe" 2>/dev/null || true
    emit rtt_p50_us "$(jget "$WORK/rtt.json" p50_us)"
    emit rtt_p99_us "$(jget "$WORK/rtt.json" p99_us)"
    # Where a round trip's added time goes (tunnel processes, per probe): µs running on a CPU,
    # µs runnable but waiting for one, and times scheduled in (wake-ups). The rest of the added
    # RTT is wake-up latency the scheduler does not count (idle exit, IPIs) and the kernel's path.
    if [ -n "$PIDS" ]; then
        read -r r0 w0 n0 <<<"$s0"; read -r r1 w1 n1 <<<"$s1"
        emit rtt_run_us_per_probe "$(awk -v d=$((r1 - r0)) -v c="$count" 'BEGIN {printf "%.2f", d / c / 1000}')"
        emit rtt_runq_us_per_probe "$(awk -v d=$((w1 - w0)) -v c="$count" 'BEGIN {printf "%.2f", d / c / 1000}')"
        emit rtt_wakeups_per_probe "$(awk -v d=$((n1 - n0)) -v c="$count" 'BEGIN {printf "%.2f", d / c}')"
    fi
    # TCP
    cpu0=$(cpu_ticks) rb0=$(rcvbuf)
    local prof=""
    if [ "$PROFILE" = 1 ] && [ "$RUN" = 1 ] && [ -n "$PIDS" ]; then
        perf record -q -F 499 -g -p "$(echo $PIDS | tr ' ' ,)" -o "$WORK/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        prof=$!
    fi
    iperf tcp1
    if [ -n "$prof" ]; then
        wait "$prof" || true
        perf report -i "$WORK/perf.data" --stdio --no-children -g none --percent-limit 1 \
            --sort dso,symbol 2>/dev/null | grep -v '^$' | head -60 >"$OUT/profile-$CASE.txt" || true
    fi
    iperf tcp4 -P 4
    cpu1=$(cpu_ticks) rb1=$(rcvbuf)
    b1=$(jget "$WORK/tcp1.json" end.sum_received.bytes)
    b4=$(jget "$WORK/tcp4.json" end.sum_received.bytes)
    emit tcp1_gbps "$(jget "$WORK/tcp1.json" end.sum_received.bits_per_second | awk '{printf "%.4f", $1 / 1e9}')"
    emit tcp4_gbps "$(jget "$WORK/tcp4.json" end.sum_received.bits_per_second | awk '{printf "%.4f", $1 / 1e9}')"
    emit tcp1_retrans "$(jget "$WORK/tcp1.json" end.sum_sent.retransmits)"
    emit tcp4_retrans "$(jget "$WORK/tcp4.json" end.sum_sent.retransmits)"
    emit rcvbuf_tcp $((rb1 - rb0))
    if [ -n "$PIDS" ] && [ "$b1" != null ] && [ "$b4" != null ]; then
        emit cpu_s_per_gb "$(awk -v c=$((cpu1 - cpu0)) -v t="$tck" -v b="$b1" -v b4="$b4" 'BEGIN {printf "%.3f", (c / t) / ((b + b4) / 1e9)}')"
    fi
    # UDP at a fixed rate: 1372-byte payloads = 1400-byte IP packets inside the tunnel.
    rb0=$(rcvbuf)
    iperf udp -u -b "$UDP_RATE" -l 1372
    rb1=$(rcvbuf)
    emit udp_loss_pct "$(jget "$WORK/udp.json" end.sum.lost_percent)"
    emit rcvbuf_udp $((rb1 - rb0))
    [ -z "$PIDS" ] || emit rss_peak_mib "$(awk -v k="$(rss_max VmHWM)" 'BEGIN {printf "%.2f", k / 1024}')"
}

# --- the runs ------------------------------------------------------------------------------
START="$(date -u +"%Y-%m-%d %H:%M UTC")" LOAD0="$(cut -d' ' -f1-3 /proc/loadavg)"
for RUN in $(seq 1 "$RUNS"); do
    for CASE in $CASES; do
        echo "run.sh: run $RUN/$RUNS: $CASE" >&2
        if case_up "$CASE"; then
            measure || echo "run.sh: $CASE: measurement failed" >&2
        fi
        teardown
        grep "\"case\":\"$CASE\",\"run\":$RUN," "$RUNLOG" | sed 's/.*"metric":"\([^"]*\)","value":\(.*\)}/  \1=\2/' | tr '\n' ' ' >&2
        echo >&2
    done
done

# --- report --------------------------------------------------------------------------------
cp "$RUNLOG" "$OUT/runs.jsonl"
cmd="perf/run.sh${ARGS:+ $ARGS}"
machine="$(lscpu | awk -F: '/^(Model name|CPU\(s\)|Thread\(s\) per core|Hypervisor vendor|L3 cache)/ {gsub(/^ +/, "", $2); printf "%s: %s; ", $1, $2}')$(uname -srm); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo); load average $LOAD0 at start, $(cut -d' ' -f1-3 /proc/loadavg) at end"
versions="fleetboard $(git rev-parse --short HEAD 2>/dev/null || echo ?)$(git diff --quiet 2>/dev/null || echo +dirty); wireguard-go ${WGGO_VERSION:-not run}; boringtun-cli ${BORINGTUN_VERSION_FULL:-not run}; $(iperf3 --version | head -1 | cut -d' ' -f1-2); $(wg --version | cut -d' ' -f1-2)"
python3 - "$WORK/meta.json" <<PY
import json, sys
json.dump({"command": """$cmd""", "date": """$START""", "commit": """$(git rev-parse --short HEAD 2>/dev/null || echo ?)""",
  "runs": $RUNS, "duration": $DURATION, "udp_rate": """$UDP_RATE""", "quick": bool($QUICK),
  "machine": """$machine""", "versions": """$versions""",
  "note": "The machine has 2 cores shared with other builds running at the same time: figures are noisy; compare cases within one run, not across runs."},
  open(sys.argv[1], "w"), indent=1)
PY
cp "$WORK/meta.json" "$OUT/meta.json"
"$REPORT" --runs "$RUNLOG" --meta "$WORK/meta.json" --markdown "$OUT/RESULTS.md" \
    --json "$OUT/results.json" --png "$OUT/results.png"
sed -n '/harness:begin/,/harness:end/p' "$OUT/RESULTS.md" | grep '^|' || true
