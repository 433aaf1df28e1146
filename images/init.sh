#!/bin/sh
# /init of the buddylab guest: mounts, network, dropbear, then waits forever.
# Markers on the console tell the host how far it got.
# With bl_console=shell on the kernel command line (a LAVA job, where the
# test shell runs on the serial console), no network and no sshd: a root
# shell on the console instead.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp

for word in $(cat /proc/cmdline); do
	case "$word" in
	bl_console=shell)
		export PS1='buddylab# ' HOME=/root
		cd /
		echo "BUDDYLAB-CONSOLE-SHELL"
		# setsid makes the shell a session leader with ttyS0 as its
		# controlling tty (cttyhack), so it has job control; respawned.
		while :; do setsid cttyhack /bin/sh; done
		;;
	esac
done

# In dependency order; the image holds the *_dev ones only for kernels that
# have them (6.1, not 5.10).
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
	failover net_failover virtio_net; do
	case "$m" in
	virtio_pci_*_dev) [ -f /lib/modules/$m.ko ] || continue ;;
	esac
	insmod /lib/modules/$m.ko || echo "BUDDYLAB-INIT-FAILED insmod $m"
done

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

# The host hands this boot's client key over on the command line
# (bl_sshkey=<type>:<base64>), so the cached image holds no client key.
for word in $(cat /proc/cmdline); do
	case "$word" in
	bl_sshkey=*) key=${word#bl_sshkey=} ;;
	esac
done
if [ -n "$key" ]; then
	echo "${key%%:*} ${key#*:}" > /root/.ssh/authorized_keys
	chmod 600 /root/.ssh/authorized_keys
fi

dropbear -s -r /etc/dropbear/host_key -p 22 -P /run/dropbear.pid
# dropbear daemonises before it listens: wait for the listening socket
# (port 22 = 0016, state 0A = LISTEN) before telling the host.
while ! grep -q ':0016 00000000:0000 0A' /proc/net/tcp; do
	usleep 2000
done
echo "BUDDYLAB-SSHD-READY"

while :; do
	sleep 3600
done
