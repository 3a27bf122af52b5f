#!/bin/bash
# Summary: PID 1 of one emulated node (run by `sparkhelpers sim up`, never by hand).
#
# Usage: node-init.sh   (environment: SIM_NODE, SIM_DIR, SIM_CGROUP, SIM_COW_SIZE, SIM_SHM_SIZE)
#
# Started inside the node's network namespace by `unshare --mount --uts --ipc --pid --fork`, so
# every mount below is private to the node. The root is a copy-on-write overlay of the host's `/`
# (upper on tmpfs): the node may write anywhere and neither the host nor the other nodes see it.
# Big data (/var/lib/docker, /raid) are bind mounts of per-node directories on disk.
set -euo pipefail
NODE=$SIM_NODE
S=$SIM_DIR/$NODE
R=$S/root
C=$S/cow
fail() { echo "node-init: $*" >&2; echo "$*" >"$S/failed"; exit 1; }
trap 'fail "line $LINENO: command failed"' ERR

hostname "$NODE"
mount --make-rprivate /
mkdir -p "$C" "$R" "$S/docker" "$S/raid/hf-cache"
mount -t tmpfs -o "size=${SIM_COW_SIZE:-2g}" "sparksim-cow" "$C"
mkdir -p "$C/root-u" "$C/root-w" "$C/dev-u" "$C/dev-w"
mount -t overlay -o "lowerdir=/,upperdir=$C/root-u,workdir=$C/root-w" "sparksim-$NODE" "$R"
mount -t proc proc "$R/proc"
mount --bind "$S/meminfo" "$R/proc/meminfo"          # a 128 GB unified-memory box
mount -t sysfs sysfs "$R/sys"                        # the sysfs of this netns (/sys/class/net)
mount --rbind /sys/fs/cgroup "$R/sys/fs/cgroup"
# Fake RoCE HCAs: the kernel has no InfiniBand, so /sys/class/infiniband is an overlay layer.
mount -t overlay -o "lowerdir=$S/fakesys:$R/sys/class" sparksim-sysclass "$R/sys/class"
# /dev: a copy-on-write layer over the host's, so /dev/infiniband exists here and only here.
mount -t overlay -o "lowerdir=/dev,upperdir=$C/dev-u,workdir=$C/dev-w" sparksim-dev "$R/dev"
mount --rbind /dev/pts "$R/dev/pts"
mount -t tmpfs -o "mode=1777,size=${SIM_SHM_SIZE:-2g}" sparksim-shm "$R/dev/shm"
mkdir -p "$R/dev/mqueue" "$R/dev/infiniband"
mount -t mqueue mqueue "$R/dev/mqueue"
for i in 0 1 2 3; do mknod -m 666 "$R/dev/infiniband/uverbs$i" c 231 $((192 + i)); done
mknod -m 666 "$R/dev/infiniband/rdma_cm" c 10 58
mount -t tmpfs -o mode=755 sparksim-run "$R/run"
mkdir -p "$R/run/sshd" "$R/run/lock"
# /tmp stays the CoW view of the host's: a checkout or pytest tmp dir under /tmp (CI clones) must be
# visible in the node at the same path; the node's own writes there stay private (overlay upper).
mkdir -p "$R$SIM_DIR"
mount --bind "$SIM_DIR" "$R$SIM_DIR"                 # harness state stays reachable, same path
mkdir -p "$R/var/lib/docker"
mount --bind "$S/docker" "$R/var/lib/docker"         # overlay2 needs a non-overlay filesystem
mkdir -p "$R/raid"
mount --bind "$S/raid" "$R/raid"
cd "$R"
mkdir -p .sparksim-old
pivot_root . .sparksim-old
cd /
umount -l /.sparksim-old
rmdir /.sparksim-old

echo "$NODE" >/etc/hostname
rm -f /etc/hosts /etc/resolv.conf
cp "$SIM_DIR/hosts" /etc/hosts
echo 'nameserver 127.0.0.1' >/etc/resolv.conf       # nothing resolves: no route off the box
mkdir -p /etc/sparksim
ln -sfn "$S/facts.json" /etc/sparksim/facts.json
cp "$SIM_DIR"/bin/* /usr/local/bin/
rm -f /etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
rm -rf /root/.ssh
mkdir -m 700 /root/.ssh
cp "$SIM_DIR/id_ed25519" "$SIM_DIR/id_ed25519.pub" /root/.ssh/
cp "$SIM_DIR/id_ed25519.pub" /root/.ssh/authorized_keys
printf 'Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' >/root/.ssh/config
# The host's shell start-up files (pyenv init...) would slow every ssh command: a plain one here.
printf '# sparksim node\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' >/root/.bashrc
cp /root/.bashrc /root/.profile
mkdir -p /etc/ssh/sshd_config.d
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nUseDNS no\nMaxStartups 100\nMaxSessions 100\n' \
  >/etc/ssh/sshd_config.d/00-sparksim.conf
ip link set lo up
/usr/sbin/sshd -E "$S/sshd.log"
mkdir -p /etc/docker
echo '{}' >/etc/docker/sparksim.json                # ignore a host /etc/docker/daemon.json
dockerd --config-file /etc/docker/sparksim.json --cgroup-parent "/$SIM_CGROUP" --bridge=none \
  --iptables=false --ip-masq=false --ip6tables=false --storage-driver=overlay2 \
  --add-runtime sparksim=/usr/local/bin/sparksim-runc --default-runtime sparksim \
  --pidfile /run/docker.pid >"$S/dockerd.log" 2>&1 &
for _ in $(seq 300); do docker version >/dev/null 2>&1 && break; sleep 0.1; done
docker version >/dev/null 2>&1 || fail "dockerd did not answer within 30 s (see $S/dockerd.log)"
echo ready >"$S/ready"
trap - ERR
exec tini -s -- sleep infinity
