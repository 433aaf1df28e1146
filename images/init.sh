#!/bin/sh
# /init of the buddylab guest: mounts, network, then bl-resume (SSH), forever.
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

preload=
for word in $(cat /proc/cmdline); do
	case "$word" in
	bl_preload)
		preload=1
		;;
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

# The kernel's modules the host chose (dependencies first; none that are built in).
while read -r m; do
	insmod "$m" || echo "BUDDYLAB-INIT-FAILED insmod $m"
done < /etc/buddylab-modules

ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0

# With bl_preload (qemu-test's guest), the module is loaded and the steps'
# tracing set up before the quiet point, so a snapshot holds them
# (buddylab.guest.preload, which writes /etc/buddylab-preload).
if [ -n "$preload" ]; then
	sh /etc/buddylab-preload || echo "BUDDYLAB-INIT-FAILED preload"
fi

# bl-resume (images/guest-tools/bl-resume.c) waits until the kernel is
# quiet, prints BUDDYLAB-WAIT-RESUME (where the host may snapshot the guest),
# reads the host's resume line from the console (entropy seed, time, this
# run's client key), then serves SSH with `dropbear -i` and prints
# BUDDYLAB-SSHD-READY.  No SSH server runs before the reseed.
bl-resume /etc/dropbear/host_key
echo "BUDDYLAB-INIT-FAILED bl-resume exited"

while :; do
	sleep 3600
done
