#!/usr/bin/env bash
# bench/serve.sh — `clipc serve` under load on 127.0.0.1, with wrk (Debian's
# `wrk`, installed here if missing; the product does not use it):
#   1. text search and thumbnails: requests/s and p50/p99 latency at 8 and 32
#      connections (10 s each);
#   2. the server's RSS before and after 10,000 malformed requests;
#   3. 1,000 slow clients (headers never finished) held open while wrk
#      measures a normal client's text searches.
# The index: 2,000 Fashion-MNIST test images written as PNG files, embedded
# by the shipped model. Run after `make`:  bash bench/serve.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null || sudo apt-get install -y -qq wrk >/dev/null; }
PORT=${1:-18931}
W=$(mktemp -d)
SERVER= SLOW=
trap 'kill $SERVER 2>/dev/null || true; kill $SLOW 2>/dev/null || true; rm -rf "$W"' EXIT
build/clipc export-images --limit 2000 --out "$W/photos" 2>/dev/null
build/clipc index --db "$W/photos.db" "$W/photos" >/dev/null 2>&1
build/clipc serve --db "$W/photos.db" --port "$PORT" 2>/dev/null &
SERVER=$!
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null && break; sleep 0.1; done
lscpu | sed -n 's/^Model name: *//p' | sed 's/^/CPU: /'
ID=$(curl -fsS "http://127.0.0.1:$PORT/api/search?q=a%20handbag&k=1" | sed 's/.*"id":\([0-9]*\).*/\1/')

run() { # label, connections, url
    wrk -t 2 -c "$2" -d 10s --latency "$3" 2>/dev/null | awk -v label="$1" -v c="$2" '
        /Requests\/sec/ {rps = $2}
        $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
        END {printf "  %-12s %2d connections: %8.1f requests/s   p50 %-8s p99 %s\n", label, c, rps, p50, p99}'
}
echo "throughput (wrk, 2 threads, 10 s each):"
for c in 8 32; do
    run "text search" "$c" "http://127.0.0.1:$PORT/api/search?q=a%20pair%20of%20trousers&k=10"
    run "thumbnail" "$c" "http://127.0.0.1:$PORT/api/thumb/$ID"
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
BEFORE=$(rss)
python3 - "$PORT" <<'EOF'
import concurrent.futures, socket, sys
port = int(sys.argv[1])
bad = [b"GARBAGE\r\n\r\n", b"GET /api/search?q=%ZZ&k=x HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /api/thumb/-1 HTTP/1.0\r\n\r\n",
       b"POST /api/search HTTP/1.0\r\nContent-Length: 10\r\n\r\n\x89PNGxxxxxx", b"GET /" + b"a" * 9000 + b" HTTP/1.0\r\n\r\n",
       b"GET /api/search?q=" + b"%22" * 400 + b" HTTP/1.0\r\n\r\n", b"DELETE / HTTP/1.0\r\n\r\n", b"\x00\xff\xfe\r\n\r\n"]
def send(i):  # one malformed request; True if answered with a 4xx
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(2)
    try:
        s.sendall(bad[i % len(bad)])
        s.shutdown(socket.SHUT_WR)  # the request is all there is
        return s.recv(65536).startswith(b"HTTP/1.1 4")
    except OSError:  # closed without an answer, or held until our timeout
        return False
    finally:
        s.close()
with concurrent.futures.ThreadPoolExecutor(64) as pool:
    answered = sum(pool.map(send, range(10000)))
print(f"10,000 malformed requests: {answered} answered with a 4xx, the rest closed")
EOF
AFTER=$(rss)
echo "RSS: ${BEFORE} kB before 10,000 malformed requests, ${AFTER} kB after"

python3 - "$PORT" <<'EOF' &
import socket, sys, time
socks = []
for i in range(1000):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    socks.append(s)
time.sleep(30)
EOF
SLOW=$!
sleep 3
echo "with 1,000 slow clients holding connections:"
run "text search" 8 "http://127.0.0.1:$PORT/api/search?q=a%20pair%20of%20trousers&k=10"
