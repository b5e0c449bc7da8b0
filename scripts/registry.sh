# Sourced by the test scripts: start_registry DIR starts Debian's docker-registry on a free
# loopback port, exports CRID_TEST_REGISTRY=127.0.0.1:PORT and adds its pid to PIDS.
start_registry() {
    local dir=$1 port
    mkdir -p "$dir/data"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$dir/config.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
log:
  level: warn
YML
    docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break
        sleep 0.1
    done
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$dir/log"; return 1; }
    CRID_TEST_REGISTRY=127.0.0.1:$port
}
