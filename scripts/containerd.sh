# Sourced by scripts/conformance-containerd.sh and scripts/bench.sh.
#
# start_containerd DIR REGISTRY starts Debian's containerd 1.6 (+ runc) with everything of its
# own under DIR: root, state, socket, runc state, CNI network (bridge cridctr0, 10.89.0.0/16,
# IPAM data in DIR) and a hosts.toml for the loopback REGISTRY, whose pause:3.10 is the sandbox
# image. Exports CONTAINERD_SOCK and adds containerd's pid to PIDS. stop_containerd DIR stops
# what that run left behind (containers, shims, mounts, the bridge).
#
# Host limits this works around (see conformance/src/gaps.rs for what remains):
# - no CAP_SYS_RESOURCE: containerd sets the sandbox's oom_score_adj to -998 and runc fails
#   to write it, so restrict_oom_score_adj keeps every value at or above containerd's own;
# - cgroup v1 and no systemd as PID 1: cgroupfs driver (SystemdCgroup = false).
start_containerd() {
    local dir=$1 registry=$2
    mkdir -p "$dir/net.d" "$dir/certs.d/$registry" "$dir/cni"
    cat >"$dir/net.d/10-bridge.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "cridctr",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cridctr0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni",
        "ranges": [[{ "subnet": "10.89.0.0/16" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } },
    { "type": "loopback" }
  ]
}
JSON
    cat >"$dir/certs.d/$registry/hosts.toml" <<TOML
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve", "push"]
TOML
    cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$registry/pause:3.10"
  restrict_oom_score_adj = true
  enable_selinux = false
  stats_collect_period = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$dir/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/certs.d"
TOML
    containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
    PIDS+=($!)
    CONTAINERD_SOCK=$dir/containerd.sock
    for _ in $(seq 100); do [ -S "$CONTAINERD_SOCK" ] && break; sleep 0.1; done
    [ -S "$CONTAINERD_SOCK" ] || { tail -30 "$dir/containerd.log"; return 1; }
    export CONTAINERD_SOCK
}

# After containerd itself is stopped: its containers, shims (their command line carries the
# run's socket path), mounts and bridge outlive it.
stop_containerd() {
    local dir=$1 id pid
    if [ -d "$dir/runc/k8s.io" ]; then
        for id in $(runc --root "$dir/runc/k8s.io" list -q 2>/dev/null); do
            runc --root "$dir/runc/k8s.io" kill "$id" KILL 2>/dev/null || true
            runc --root "$dir/runc/k8s.io" delete -f "$id" 2>/dev/null || true
        done
    fi
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/containerd.sock" || true); do
        kill "$pid" 2>/dev/null || true
    done
    grep -o " $dir[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    ip link del cridctr0 2>/dev/null || true
}
