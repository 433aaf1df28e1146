// SPDX-License-Identifier: GPL-2.0
/*
 * bl-write: byte-exact write(2)s for testing buddylab's control file.
 *
 *   bl-write FILE < records
 *
 * Opens FILE for writing once, then reads records from standard input until
 * it ends.  A record is a 4-byte little-endian header h followed by its
 * payload:
 *   - h & 0x7fffffff is the length L (at most 1 MiB);
 *   - if h & 0x80000000 is clear, L payload bytes follow and are written
 *     with one write(2) of exactly L bytes (L may be 0);
 *   - if it is set, no payload follows and one write(2) of L bytes is made
 *     from an unmapped address (the kernel must answer EFAULT or reject L).
 * For each record one line goes to standard output: the value write(2)
 * returned, or -errno.  Exit status: 0 if every record was read whole,
 * 2 on bad usage, a short record or an oversized length.
 *
 * Build (static, the guest has no libc):  gcc -static -Os -s -o bl-write bl-write.c
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_LEN		(1u << 20)
#define BAD_PTR		0x80000000u
#define UNMAPPED	((const void *)16)	/* below mmap_min_addr */

static unsigned char buf[MAX_LEN];

/* Read exactly n bytes; 1 on success, 0 at a clean end, -1 if short. */
static int read_full(int fd, void *p, size_t n)
{
	size_t got = 0;
	ssize_t r;

	while (got < n) {
		r = read(fd, (char *)p + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return got ? -1 : 0;
		got += r;
	}
	return 1;
}

int main(int argc, char **argv)
{
	unsigned char hdr[4];
	uint32_t h, len;
	const void *src;
	ssize_t ret;
	int fd, r;

	if (argc != 2) {
		fprintf(stderr, "usage: %s FILE < records\n", argv[0]);
		return 2;
	}
	fd = open(argv[1], O_WRONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	for (;;) {
		r = read_full(0, hdr, sizeof(hdr));
		if (r == 0)
			break;
		if (r < 0)
			goto short_record;
		h = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
		len = h & ~BAD_PTR;
		if (len > MAX_LEN) {
			fprintf(stderr, "record length %u > %u\n", len, MAX_LEN);
			return 2;
		}
		src = UNMAPPED;
		if (!(h & BAD_PTR)) {
			if (len && read_full(0, buf, len) != 1)
				goto short_record;
			src = buf;
		}
		ret = write(fd, src, len);
		printf("%zd\n", ret < 0 ? (ssize_t)-errno : ret);
	}
	if (fflush(stdout))
		return 2;
	return 0;

short_record:
	fprintf(stderr, "short record\n");
	return 2;
}
