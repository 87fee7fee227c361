#!/usr/bin/env bash
# proxy-loopback.sh — clusterlab's proxy against nginx on loopback, no Docker.
#
# An nginx (Debian nginx-light, one worker) is the upstream: a 318-byte JSON at /api/status
# and a 3210-byte page at /. In front of it, each on 127.0.0.1: clusterlab's proxy, following
# a hosts file whose host0 is 127.0.0.1 (`--follow-file`), and nginx as a reverse proxy
# (1 worker, keep-alive upstream, the same forwarding headers). Steps:
#   bench      wrk -t1 -c4, ROUNDS alternating rounds of SECS seconds per proxy and path:
#              median req/s, p99, and the proxy's CPU µs/request (/proc/<pid>/stat)
#   callgrind  instructions/request under valgrind --tool=callgrind: CALLS and CALLS/5
#              sequential keep-alive requests (one curl connection), the difference divided
#              by the difference (start-up and shutdown cancel out); load-independent
#   strace     system calls/request: strace -c -f on the proxy during one wrk round
# Ways (WAYS): cl clusterlab's proxy, ng nginx as a reverse proxy, rl clusterlab's byte relay
# (`proxy --relay-to`, one upstream connection per client connection: the floor).
#
# Usage: harness/scripts/proxy-loopback.sh [PROXY_BINARY]   (default target/node/proxy,
#        built with `cargo build --profile node -p proxy --bin proxy`)
# Environment: KEEP=1 keeps the work directory (callgrind output: cg-*.out), STEPS="bench callgrind strace", ROUNDS=3, SECS=4, CALLS=5000, WAYS="cl ng",
#              PORT_BASE=18080 (upstream +1, clusterlab +2, nginx proxy +3, relay +4).
set -euo pipefail

PROXY=${1:-target/node/proxy}
STEPS=${STEPS:-bench callgrind strace}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-4}
CALLS=${CALLS:-5000}
PORT_BASE=${PORT_BASE:-18080}
UP_PORT=$((PORT_BASE + 1))
CL_PORT=$((PORT_BASE + 2))
NG_PORT=$((PORT_BASE + 3))
RL_PORT=$((PORT_BASE + 4))
PATHS=(/api/status /)
WAYS=${WAYS:-cl ng}

need() { command -v "$1" >/dev/null || { echo "missing $1 (apt-get install $2)" >&2; exit 1; }; }
need nginx nginx-light
need wrk wrk
need curl curl
[[ $STEPS == *callgrind* ]] && need valgrind valgrind
[[ $STEPS == *strace* ]] && need strace strace
[[ -x $PROXY ]] || { echo "no proxy binary at $PROXY" >&2; exit 1; }
PROXY=$(realpath "$PROXY")

DIR=$(mktemp -d /tmp/clusterlab-loopback.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

# --- content and configuration ---------------------------------------------------------
mkdir -p "$DIR/www/api" "$DIR/tmp"
# A leader's status document and page, padded to the sizes of the real ones.
pad() { local n=$1; printf "%${n}s" "" | tr ' ' x; }
json_head='{"node":"node1","leader":"node1","is_leader":true,"term":7,"revision":1042,"members":["node0","node1","node2"],"hosts":{"node0":"10.76.200.10","node1":"10.76.200.11","node2":"10.76.200.12"},"uptime_s":3600,"version":"0.1.0","ok":true,"padding":"'
printf '%s%s"}' "$json_head" "$(pad $((318 - ${#json_head} - 2)))" >"$DIR/www/api/status"
page_head=$'<!doctype html>\n<html><head><title>clusterlab node1</title></head><body>\n<h1>node1 is the leader</h1>\n<ul>\n'
for i in $(seq 1 150); do page_head+="<li>member $i</li>"$'\n'; done
page_tail=$'</ul></body></html>\n'
printf '%s<!--%s-->%s' "$page_head" "$(pad $((3210 - ${#page_head} - ${#page_tail} - 7)))" "$page_tail" >"$DIR/www/index.html"
[[ $(stat -c %s "$DIR/www/api/status") == 318 && $(stat -c %s "$DIR/www/index.html") == 3210 ]] ||
    { echo "content sizes wrong" >&2; exit 1; }

common="worker_processes 1; daemon off; master_process off; error_log $DIR/%s-error.log warn; pid $DIR/%s.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $DIR/tmp/%s-body; proxy_temp_path $DIR/tmp/%s-proxy;
  fastcgi_temp_path $DIR/tmp/%s-fcgi; uwsgi_temp_path $DIR/tmp/%s-uwsgi; scgi_temp_path $DIR/tmp/%s-scgi;
  keepalive_requests 100000000; keepalive_timeout 75s;"
printf "$common"'
  server {
    listen 127.0.0.1:%s;
    root %s/www;
    location = /api/status { default_type application/json; }
    location = / { default_type text/html; try_files /index.html =404; }
  }
}
' up up up up up up up "$UP_PORT" "$DIR" >"$DIR/upstream.conf"
printf "$common"'
  upstream leader { server 127.0.0.1:%s; keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:%s;
    location / {
      proxy_pass http://leader;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto http;
    }
  }
}
' ng ng ng ng ng ng ng "$UP_PORT" "$NG_PORT" >"$DIR/nginx-proxy.conf"
printf '127.0.0.1 localhost\n# BEGIN clusterlab\n127.0.0.1 host0 upstream\n# END clusterlab\n' >"$DIR/hosts"

wait_ready() { # port path
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "http://127.0.0.1:$1$2" && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

# start_<way> [wrapper...]: starts it (under the wrapper), sets PID.
start_cl() {
    "$@" "$PROXY" --follow-file "$DIR/hosts" --follow-interval-ms 600000 \
        --listen "127.0.0.1:$CL_PORT" --upstream-port "$UP_PORT" >>"$DIR/cl.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_ready "$CL_PORT" /api/status
}
start_ng() {
    "$@" nginx -e "$DIR/ng-stderr.log" -c "$DIR/nginx-proxy.conf" -p "$DIR" >>"$DIR/ng.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_ready "$NG_PORT" /api/status
}
start_rl() {
    "$@" "$PROXY" --relay-to "127.0.0.1:$UP_PORT" --listen "127.0.0.1:$RL_PORT" >>"$DIR/rl.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_ready "$RL_PORT" /api/status
}
port_of() { case $1 in cl) echo "$CL_PORT" ;; ng) echo "$NG_PORT" ;; rl) echo "$RL_PORT" ;; esac; }
name_of() { case $1 in cl) echo "clusterlab proxy" ;; ng) echo "nginx proxy" ;; rl) echo "byte relay" ;; esac; }
stop() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
# wrk's "N requests in": the requests of one round.
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }
# p99 in ms from wrk --latency.
wrk_p99() { awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub(/us$/, "", v); v /= 1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v *= 1000}; print v}' "$1"; }

echo "proxy-loopback: $PROXY; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
nginx -e "$DIR/up-stderr.log" -c "$DIR/upstream.conf" -p "$DIR" >>"$DIR/up.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_ready "$UP_PORT" /api/status
TCK=$(getconf CLK_TCK)

if [[ $STEPS == *bench* ]]; then
    declare -A PID_OF=()
    for way in $WAYS; do start_$way; PID_OF[$way]=$PID; done
    echo "bench: wrk -t1 -c4 --latency, $ROUNDS alternating rounds of ${SECS} s per proxy and path"
    for path in "${PATHS[@]}"; do
        for way in $WAYS; do wrk -t1 -c4 -d1s "http://127.0.0.1:$(port_of $way)$path" >/dev/null; done
        for r in $(seq 1 "$ROUNDS"); do
            for way in $WAYS; do
                pid=${PID_OF[$way]}
                out="$DIR/wrk-$way-${path//\//_}-$r.txt"
                t0=$(cpu_ticks "$pid")
                wrk -t1 -c4 -d"${SECS}s" --latency "http://127.0.0.1:$(port_of $way)$path" >"$out"
                t1=$(cpu_ticks "$pid")
                n=$(wrk_requests "$out")
                grep -q 'Non-2xx\|Socket errors' "$out" && { echo "errors in $out:" >&2; cat "$out" >&2; }
                echo "$(awk -v n="$n" -v s="$SECS" 'BEGIN {printf "%.0f", n / s}')" >>"$DIR/rps-$way-${path//\//_}"
                wrk_p99 "$out" >>"$DIR/p99-$way-${path//\//_}"
                awk -v d=$((t1 - t0)) -v t="$TCK" -v n="$n" 'BEGIN {printf "%.2f\n", d / t * 1e6 / n}' >>"$DIR/cpu-$way-${path//\//_}"
            done
        done
        for way in $WAYS; do
            k="$way-${path//\//_}"
            printf '  %-12s %-17s %8s req/s   p99 %6s ms   CPU µs/request %6s   (rounds: %s req/s)\n' "$path" "$(name_of $way)" \
                "$(median <"$DIR/rps-$k")" "$(median <"$DIR/p99-$k")" "$(median <"$DIR/cpu-$k")" "$(paste -sd' ' "$DIR/rps-$k")"
        done
        for other in ng rl; do
            [[ " $WAYS " == *" cl "* && " $WAYS " == *" $other "* ]] || continue
            awk -v a="$(median <"$DIR/rps-cl-${path//\//_}")" -v b="$(median <"$DIR/rps-$other-${path//\//_}")" -v p="$path" \
                -v o="$(name_of "$other")" 'BEGIN {printf "  %-12s clusterlab / %s throughput: %.2f×\n", p, o, a / b}'
        done
    done
    for way in $WAYS; do stop "${PID_OF[$way]}"; done
fi

if [[ $STEPS == *callgrind* ]]; then
    echo "callgrind: instructions/request, (I($CALLS) − I($((CALLS / 5)))) / $((CALLS - CALLS / 5)), one keep-alive connection"
    for path in "${PATHS[@]}"; do
        for way in $WAYS; do
            declare -A ir=()
            for n in $((CALLS / 5)) "$CALLS"; do
                cfg="$DIR/curl-$n.cfg"
                for _ in $(seq 1 "$n"); do
                    printf 'url = "http://127.0.0.1:%s%s"\noutput = "/dev/null"\n' "$(port_of $way)" "$path"
                done >"$cfg"
                cg="$DIR/cg-$way-$n.out"
                start_$way valgrind --tool=callgrind --callgrind-out-file="$cg" --dump-instr=no
                curl -s -K "$cfg" -o /dev/null
                stop "$PID"
                ir[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$cg")
            done
            small=$((CALLS / 5))
            awk -v a="${ir[$small]}" -v b="${ir[$CALLS]}" -v d=$((CALLS - small)) -v p="$path" -v w="$(name_of $way)" \
                'BEGIN {printf "  %-12s %-17s %8.0f instructions/request\n", p, w, (b - a) / d}'
            unset ir
        done
    done
fi

if [[ $STEPS == *strace* ]]; then
    echo "strace: system calls/request, strace -c -f on the proxy during a ${SECS} s wrk -t1 -c4 round"
    for path in "${PATHS[@]}"; do
        for way in $WAYS; do
            start_$way
            pid=$PID
            strace -c -f -p "$pid" -o "$DIR/strace-$way.txt" 2>/dev/null &
            spid=$!
            sleep 0.5
            out="$DIR/wrk-strace-$way.txt"
            wrk -t1 -c4 -d"${SECS}s" "http://127.0.0.1:$(port_of $way)$path" >"$out"
            kill -INT "$spid"; wait "$spid" 2>/dev/null || true
            n=$(wrk_requests "$out")
            calls=$(awk '$NF == "total" {print $4}' "$DIR/strace-$way.txt")
            awk -v c="$calls" -v n="$n" -v p="$path" -v w="$(name_of $way)" \
                'BEGIN {printf "  %-12s %-17s %6.2f system calls/request (%d in %d requests)\n", p, w, c / n, c, n}'
            awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" {printf " %s %.2f", $NF, $4 / n} END {print ""}' "$DIR/strace-$way.txt" | sed 's/^/     /'
            stop "$pid"
        done
    done
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
