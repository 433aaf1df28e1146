// SPDX-License-Identifier: GPL-2.0
/*
 * bl-resume: the guest's side of a boot or a restore from a snapshot.
 *
 *   bl-resume HOSTKEY
 *   bl-resume --fingerprint
 *
 * Run by /init on the console once the guest is set up.  It
 *   0. forks NR_CACHED_STACKS children that exit together (prime_stacks);
 *   1. waits until the kernel is quiet: the page allocator's event counters
 *      (pgalloc_* and pgfree in /proc/vmstat) unchanged for QUIET_SAMPLES
 *      samples QUIET_MS apart, at most QUIET_MAX_MS;
 *   2. turns the console's echo off and prints
 *        BUDDYLAB-WAIT-RESUME quiet_ms=N
 *      The host may snapshot the guest here (nothing in it has used
 *      randomness for the network yet: no SSH server runs);
 *   3. reads one line from the console:
 *        R <seed: 64..512 hex digits> <unix time in ns> <key type> <key base64>
 *      adds the seed to the kernel's input pool with RNDADDENTROPY
 *      (credited), reseeds the kernel's CRNG (RNDRESEEDCRNG), so every
 *      restored guest's /dev/urandom differs from the snapshot's, sets
 *      CLOCK_REALTIME, and writes /root/.ssh/authorized_keys;
 *   4. folds the per-CPU counter differences (fold_vmstat), waits until
 *      the kernel is quiet again (as --fingerprint does) and
 *      writes the start state (/proc/pagetypeinfo, "@@", /proc/zoneinfo) to
 *      START_STATE_FILE: read here, before any SSH connection, every restore
 *      of one snapshot has run the same few steps since the snapshot; the
 *      host reads the file with its first guest command;
 *   5. listens on TCP port 22, prints BUDDYLAB-SSHD-READY (connections queue
 *      from now on) and serves each connection with `dropbear -i`, started
 *      after the reseed, so its session keys come from fresh entropy.
 * It never returns unless something fails: then it prints
 *   BUDDYLAB-INIT-FAILED <why>
 * and exits 1.
 *
 * With --fingerprint it folds the counters and waits until the kernel is quiet (FP_QUIET_SAMPLES
 * samples FP_QUIET_MS apart: RCU callbacks that free the page tables and
 * stacks of exited processes run within a few ticks), then prints
 * /proc/pagetypeinfo, a line "@@" and /proc/zoneinfo: the state the host
 * compares with a snapshot's reference (buddylab.guest.snapshot).  It reads
 * them itself, so no process exits between the wait and the reading.
 *
 * Build (static, the guest has no libc):  gcc -static -Os -s -o bl-resume bl-resume.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define QUIET_MS	20
#define QUIET_SAMPLES	5
#define QUIET_MAX_MS	3000
#define FP_QUIET_MS	10
#define FP_QUIET_SAMPLES	4
#define MAX_SEED	256
/* kernel/fork.c: freed kernel stacks each CPU keeps for the next thread. */
#define NR_CACHED_STACKS	2
#define LINE_MAX_LEN	2048
/* buddylab.guest.snapshot.START_STATE_FILE */
#define START_STATE_FILE	"/tmp/buddylab-start-state"

static void fail(const char *why)
{
	printf("BUDDYLAB-INIT-FAILED bl-resume: %s (%s)\n", why, strerror(errno));
	fflush(stdout);
	exit(1);
}

/* Sum of pgalloc_* and pgfree (events summed over CPUs when read: exact). */
static unsigned long long page_events(void)
{
	char name[64];
	unsigned long long value, sum = 0;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		fail("cannot open /proc/vmstat");
	while (fscanf(f, "%63s %llu", name, &value) == 2)
		if (!strncmp(name, "pgalloc_", 8) || !strcmp(name, "pgfree"))
			sum += value;
	fclose(f);
	return sum;
}

static int wait_quiet(int step_ms, int samples)
{
	struct timespec step = { 0, step_ms * 1000000L };
	unsigned long long last = page_events(), now;
	int same = 0, waited = 0;

	while (same < samples && waited < QUIET_MAX_MS) {
		nanosleep(&step, NULL);
		waited += step_ms;
		now = page_events();
		same = now == last ? same + 1 : 0;
		last = now;
	}
	return waited;
}

/*
 * Both files are read whole before anything is written: pipe buffers that
 * the reader (dropbear) frees while the second file is read would land on
 * the per-CPU lists that file shows.
 */
static char fp_buf[1 << 20];
static size_t fp_len;

static int slurp(const char *path)
{
	size_t n;
	FILE *f = fopen(path, "r");

	if (!f)
		return 1;
	while ((n = fread(fp_buf + fp_len, 1, sizeof(fp_buf) - fp_len, f)) > 0)
		fp_len += n;
	n = ferror(f) || fp_len == sizeof(fp_buf);
	fclose(f);
	return n;
}

static int read_fingerprint(void)
{
	static const char sep[] = "@@\n";

	fp_len = 0;
	if (slurp("/proc/pagetypeinfo") || fp_len + sizeof(sep) > sizeof(fp_buf))
		return 1;
	memcpy(fp_buf + fp_len, sep, sizeof(sep) - 1);
	fp_len += sizeof(sep) - 1;
	return slurp("/proc/zoneinfo");
}

static int print_fingerprint(void)
{
	if (read_fingerprint())
		return 1;
	return fwrite(fp_buf, 1, fp_len, stdout) != fp_len || fflush(stdout);
}

/*
 * /proc/zoneinfo's "pages free" is the zone's global counter, which the
 * per-CPU differences reach only when vmstat_update() folds them, about a
 * second after a change: a restore read before or after that fold (the
 * preload's allocations just before the snapshot leave some).  Writing
 * /proc/sys/vm/stat_refresh folds them on every CPU at once (mm/vmstat.c
 * vmstat_refresh(); it drains no per-CPU page list of a local zone).
 */
static void fold_vmstat(void)
{
	int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);

	if (fd >= 0) {
		if (write(fd, "1\n", 2) < 0) {
			/* A counter below zero: the fold happened all the same. */
		}
		close(fd);
	}
}

static int wait_quiet_folded(void)
{
	fold_vmstat();
	return wait_quiet(FP_QUIET_MS, FP_QUIET_SAMPLES);
}

/* The state is read whole before the file is made: its pages come after. */
static void save_start_state(void)
{
	FILE *f;
	int fd;

	wait_quiet_folded();
	if (read_fingerprint())
		fail("cannot read the start state in /proc");
	fd = open(START_STATE_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w")))
		fail("cannot write " START_STATE_FILE);
	if (fwrite(fp_buf, 1, fp_len, f) != fp_len || fclose(f))
		fail("cannot write " START_STATE_FILE);
}

/*
 * Children alive at once that then exit leave their kernel stacks (4 pages
 * each, vmalloc'ed) in the kernel's cache of freed stacks.  A kernel thread
 * that a restored guest makes before its start state is read (a workqueue
 * worker, made or not depending on timing) then takes a cached stack instead
 * of four pages from the per-CPU list.
 */
static void prime_stacks(void)
{
	int p[2], i;
	char c;

	if (pipe(p) < 0)
		fail("pipe");
	for (i = 0; i < NR_CACHED_STACKS; i++) {
		pid_t pid = fork();

		if (pid < 0)
			fail("fork");
		if (pid == 0) {
			close(p[1]);
			/* Returns at EOF: when the parent has forked them all. */
			while (read(p[0], &c, 1) > 0)
				;
			_exit(0);
		}
	}
	close(p[0]);
	close(p[1]);
	while (wait(NULL) > 0)
		;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void reseed(const char *hex)
{
	struct {
		struct rand_pool_info info;
		unsigned char buf[MAX_SEED];
	} pool;
	size_t i, n = strlen(hex);
	int fd, hi, lo;

	if (n < 64 || n > 2 * MAX_SEED || n % 2)
		fail("seed must be 64..512 hex digits");
	for (i = 0; i < n / 2; i++) {
		hi = hexval(hex[2 * i]);
		lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			fail("seed is not hex");
		pool.buf[i] = hi << 4 | lo;
	}
	pool.info.buf_size = n / 2;
	pool.info.entropy_count = 8 * (n / 2);
	fd = open("/dev/urandom", O_WRONLY);
	if (fd < 0)
		fail("cannot open /dev/urandom");
	if (ioctl(fd, RNDADDENTROPY, &pool) < 0)
		fail("RNDADDENTROPY");
	if (ioctl(fd, RNDRESEEDCRNG) < 0)
		fail("RNDRESEEDCRNG");
	close(fd);
	explicit_bzero(&pool, sizeof(pool));
}

static void set_clock(const char *ns_text)
{
	char *end;
	unsigned long long ns = strtoull(ns_text, &end, 10);
	struct timespec ts;

	if (*end || end == ns_text)
		fail("time is not a number");
	ts.tv_sec = ns / 1000000000ULL;
	ts.tv_nsec = ns % 1000000000ULL;
	if (clock_settime(CLOCK_REALTIME, &ts) < 0)
		fail("clock_settime");
}

static void authorize(const char *type, const char *b64)
{
	FILE *f;
	int fd = open("/root/.ssh/authorized_keys", O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || !(f = fdopen(fd, "w")))
		fail("cannot write authorized_keys");
	if (fprintf(f, "%s %s\n", type, b64) < 0 || fclose(f))
		fail("cannot write authorized_keys");
}

static void serve(const char *hostkey)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(22) };
	int one = 1, s, c;
	pid_t pid;

	s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		fail("socket");
	if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(s, 16) < 0)
		fail("cannot listen on port 22");
	/* Children are reaped by the kernel; each resets this before exec. */
	signal(SIGCHLD, SIG_IGN);
	printf("BUDDYLAB-SSHD-READY\n");
	fflush(stdout);
	for (;;) {
		c = accept(s, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fail("accept");
		}
		pid = fork();
		if (pid == 0) {
			signal(SIGCHLD, SIG_DFL);
			dup2(c, 0);
			dup2(c, 1);
			close(c);
			execl("/usr/sbin/dropbear", "dropbear", "-i", "-s", "-r", hostkey,
			      (char *)NULL);
			_exit(127);
		}
		close(c);
	}
}

int main(int argc, char **argv)
{
	char line[LINE_MAX_LEN], *words[6], *save = NULL;
	struct termios t;
	int quiet_ms, n = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: %s HOSTKEY | --fingerprint\n", argv[0]);
		return 2;
	}
	if (!strcmp(argv[1], "--fingerprint")) {
		wait_quiet_folded();
		return print_fingerprint();
	}
	prime_stacks();
	quiet_ms = wait_quiet(QUIET_MS, QUIET_SAMPLES);
	/* The seed must not be echoed into the serial log. */
	if (tcgetattr(0, &t) == 0) {
		t.c_lflag &= ~(ECHO | ECHONL);
		tcsetattr(0, TCSANOW, &t);
	}
	printf("BUDDYLAB-WAIT-RESUME quiet_ms=%d%s\n", quiet_ms,
	       quiet_ms >= QUIET_MAX_MS ? " (not quiet)" : "");
	fflush(stdout);
	for (;;) {
		if (!fgets(line, sizeof(line), stdin))
			fail("console closed before the resume line");
		if (line[0] == 'R' && line[1] == ' ')
			break;
	}
	line[strcspn(line, "\r\n")] = 0;
	for (char *w = strtok_r(line, " ", &save); w && n < 6; w = strtok_r(NULL, " ", &save))
		words[n++] = w;
	if (n != 5) {
		errno = EINVAL;
		fail("resume line must have 5 words");
	}
	reseed(words[1]);
	set_clock(words[2]);
	authorize(words[3], words[4]);
	explicit_bzero(line, sizeof(line));
	save_start_state();
	serve(argv[1]);
	return 1;
}
