// SPDX-License-Identifier: GPL-2.0
/*
 * buddylab: drive the page allocator from user space and record, inside
 * the kernel, exactly what its buddy and per-CPU lists looked like just
 * before and just after each operation.
 *
 * Interface: debugfs buddylab/{control,allocs,log,freelists,pageblocks,zones},
 * described in kmod/README.md.  Written for Linux 5.10.y and 6.1.y
 * (x86-64): it reads struct zone, struct per_cpu_pages and the pageblock
 * bitmap directly.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitops.h>
#include <linux/completion.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/kernel.h>
#include <linux/list.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/nodemask.h>
#include <linux/overflow.h>
#include <linux/page_ref.h>
#include <linux/pageblock-flags.h>
#include <linux/rbtree.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/stop_machine.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/version.h>
#include <linux/vmalloc.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>

/*
 * The module reads the allocator's structures directly, so it builds only
 * for the kernel series whose headers it was checked against: 5.10 (Debian
 * 5.10.0-46, 5.10.262) and 6.1 (Debian 6.1.0-57, 6.1.192).  BL_PCP_BY_ORDER
 * says whether the per-CPU lists hold blocks of several orders (6.1).
 */
#define BL_V5_10	KERNEL_VERSION(5, 10, 0)
#define BL_V5_11	KERNEL_VERSION(5, 11, 0)
#define BL_V6_1		KERNEL_VERSION(6, 1, 0)
#define BL_V6_2		KERNEL_VERSION(6, 2, 0)

#if LINUX_VERSION_CODE >= BL_V5_10 && LINUX_VERSION_CODE < BL_V5_11
#define BL_PCP_BY_ORDER	0
#elif LINUX_VERSION_CODE >= BL_V6_1 && LINUX_VERSION_CODE < BL_V6_2
#define BL_PCP_BY_ORDER	1
#else
#error "buddylab knows only Linux 5.10.y and 6.1.y (see kmod/README.md)"
#endif

#define CREATE_TRACE_POINTS
#include "buddylab_trace.h"

#define BL_CMD_MAX	256		/* bytes of one command */
#define BL_MAX_COUNT	65536		/* blocks of one alloc command */
#define BL_POOL_SIZE	65536		/* tracking entries allocated at load */
#define BL_MAX_FILL	BIT(20)		/* blocks of one fill command */
#define BL_LOG_CAP	1024		/* op records kept */
#define BL_LOG_BUDGET	(64 << 20)	/* bytes the log may take at most */
#define BL_DUMP_TRIES	4
/* vm.watermark_boost_factor's default (mm/page_alloc.c) */
#define BL_DEFAULT_BOOST_FACTOR	15000

/*
 * The module's own memory (zones, log, pool, tracking blocks, images):
 * failing with -ENOMEM is always better than waking the OOM killer.
 */
#define BL_GFP_OWN	(GFP_KERNEL | __GFP_NOWARN | __GFP_RETRY_MAYFAIL)

/*
 * The leak command breaks page refcounts on purpose (the book's mistake,
 * see bl_exec_leak()).  Without allow_leak=1 at load it gets -EPERM.
 */
static bool allow_leak;
module_param(allow_leak, bool, 0400);
MODULE_PARM_DESC(allow_leak, "accept the leak command, which breaks page refcounts on purpose");

/* The watermark guard's line for the NORECLAIM masks: see bl_headroom(). */
static bool noreclaim_min;
module_param(noreclaim_min, bool, 0400);
MODULE_PARM_DESC(noreclaim_min, "let NORECLAIM requests take a zone down to one per-CPU batch above its min watermark (for a guest that runs nothing else)");

/*
 * The images of freelists and pageblocks from buffers taken at load instead
 * of at each open: see bl_reserve_init().
 */
static bool dump_reserve;
module_param(dump_reserve, bool, 0400);
MODULE_PARM_DESC(dump_reserve, "take the freelists and pageblocks images in buffers allocated at load (one entry per managed page: about 0.6% of memory), so a dump under memory pressure allocates nothing");

/*
 * The per-CPU lists.  5.10: one list of order-0 pages per migratetype below
 * MIGRATE_PCPTYPES, used only by their CPU with interrupts off.  6.1: one
 * list per (order, migratetype) for orders 0 .. PAGE_ALLOC_COSTLY_ORDER at
 * index MIGRATE_PCPTYPES * order + migratetype, then two lists for the THP
 * order (pageblock_order): Unmovable and Reclaimable blocks share the first,
 * Movable ones have the second.  That is order_to_pindex() and
 * pindex_to_order() of mm/page_alloc.c, which no header exports.  6.1's
 * lists have a spinlock of their own, and a page on them is linked by
 * pcp_list, a page on a free list by buddy_list (both alias lru).
 */
#if BL_PCP_BY_ORDER
#define BL_PCP_LISTS	NR_PCP_LISTS
#define bl_buddy_lru	buddy_list
#define bl_pcp_lru	pcp_list

static_assert(NR_PCP_THP == 2 && PAGE_ALLOC_COSTLY_ORDER == 3,
	      "6.1 per-CPU lists with two THP lists expected");

static struct per_cpu_pages *bl_pcp(struct zone *zone, int cpu)
{
	return per_cpu_ptr(zone->per_cpu_pageset, cpu);
}

static unsigned int bl_pcp_order(unsigned int list)
{
	return list < NR_LOWORDER_PCP_LISTS ? list / MIGRATE_PCPTYPES :
					      pageblock_order;
}

static struct per_cpu_zonestat *bl_vmstat(struct zone *zone, int cpu)
{
	return per_cpu_ptr(zone->per_cpu_zonestats, cpu);
}

/* The migratetype that names the list (see bl_mt_names). */
static unsigned int bl_pcp_mt(unsigned int list)
{
	return list < NR_LOWORDER_PCP_LISTS ? list % MIGRATE_PCPTYPES :
					      list - NR_LOWORDER_PCP_LISTS;
}

/*
 * Taken only with interrupts off and never inside a zone->lock (the kernel
 * nests zone->lock inside pcp->lock).  No holder on this CPU can be
 * waiting for us: holders keep preemption off, interrupts only try-lock.
 */
static void bl_pcp_lock(struct per_cpu_pages *pcp)
{
	spin_lock(&pcp->lock);
}

/*
 * Freeing without allocating raises it (nr_pcp_free()), each per-CPU
 * allocation halves it (rmqueue_pcplist()): how many pages the next drain
 * frees, and whether an order 1-3 free empties the lists, depend on it.
 */
static int bl_pcp_free_factor(struct per_cpu_pages *pcp)
{
	return pcp->free_factor;
}

static void bl_pcp_unlock(struct per_cpu_pages *pcp)
{
	spin_unlock(&pcp->lock);
}
#else
#define BL_PCP_LISTS	MIGRATE_PCPTYPES
#define bl_buddy_lru	lru
#define bl_pcp_lru	lru

static struct per_cpu_pages *bl_pcp(struct zone *zone, int cpu)
{
	return &per_cpu_ptr(zone->pageset, cpu)->pcp;
}

static struct per_cpu_pageset *bl_vmstat(struct zone *zone, int cpu)
{
	return per_cpu_ptr(zone->pageset, cpu);
}

static unsigned int bl_pcp_order(unsigned int list)
{
	return 0;
}

static unsigned int bl_pcp_mt(unsigned int list)
{
	return list;
}

/* 5.10 has no free_factor (its drains free pcp->batch pages). */
static int bl_pcp_free_factor(struct per_cpu_pages *pcp)
{
	return 0;
}

/* 5.10's lists are their CPU's: only it reads them, interrupts off. */
static void bl_pcp_lock(struct per_cpu_pages *pcp)
{
}

static void bl_pcp_unlock(struct per_cpu_pages *pcp)
{
}
#endif

/* The records print MAX_ORDER free counts and orders 0 .. 10. */
static_assert(MAX_ORDER == 11);

/* Names, as the interface prints and parses them. */

enum bl_api {
	BL_ALLOC_PAGES,
	BL_ALLOC_PAGE,
	BL_GFP_PAGES,
	BL_GFP_PAGE,
	BL_ZEROED_PAGE,
	BL_PAGES_EXACT,
	BL_NR_APIS
};

static const char * const bl_api_names[BL_NR_APIS] = {
	[BL_ALLOC_PAGES] = "alloc_pages",
	[BL_ALLOC_PAGE] = "alloc_page",
	[BL_GFP_PAGES] = "__get_free_pages",
	[BL_GFP_PAGE] = "__get_free_page",
	[BL_ZEROED_PAGE] = "get_zeroed_page",
	[BL_PAGES_EXACT] = "alloc_pages_exact",
};

enum bl_gfp {
	BL_KERNEL, BL_ATOMIC, BL_HIGHUSER_MOVABLE,
	BL_NORECLAIM, BL_NORECLAIM_MOVABLE, BL_NORECLAIM_RECLAIMABLE,
	BL_NORECLAIM_ATOMIC, BL_NR_GFPS
};

static const char * const bl_gfp_names[BL_NR_GFPS] = {
	[BL_KERNEL] = "GFP_KERNEL",
	[BL_ATOMIC] = "GFP_ATOMIC",
	[BL_HIGHUSER_MOVABLE] = "GFP_HIGHUSER_MOVABLE",
	[BL_NORECLAIM] = "NORECLAIM",
	[BL_NORECLAIM_MOVABLE] = "NORECLAIM_MOVABLE",
	[BL_NORECLAIM_RECLAIMABLE] = "NORECLAIM_RECLAIMABLE",
	[BL_NORECLAIM_ATOMIC] = "NORECLAIM_ATOMIC",
};

/*
 * The NORECLAIM masks have neither __GFP_DIRECT_RECLAIM nor
 * __GFP_KSWAPD_RECLAIM: the allocator neither reclaims nor compacts nor
 * wakes kswapd (and through it kcompactd) for them, so whether they
 * succeed depends only on the free lists and the watermarks.
 */
static const gfp_t bl_gfp_flags[BL_NR_GFPS] = {
	[BL_KERNEL] = GFP_KERNEL,
	[BL_ATOMIC] = GFP_ATOMIC,
	[BL_HIGHUSER_MOVABLE] = GFP_HIGHUSER_MOVABLE,
	[BL_NORECLAIM] = GFP_NOWAIT & ~__GFP_RECLAIM,
	[BL_NORECLAIM_MOVABLE] = GFP_HIGHUSER_MOVABLE & ~__GFP_RECLAIM,
	[BL_NORECLAIM_RECLAIMABLE] = __GFP_RECLAIMABLE,
	[BL_NORECLAIM_ATOMIC] = GFP_ATOMIC & ~__GFP_RECLAIM,
};

enum bl_verb {
	BL_ALLOC,
	BL_FREE,
	BL_FREE_IDS,
	BL_FREE_ALL,
	BL_LEAK,
	BL_FILL,
	BL_CLEAR_LOG,
	BL_KSWEEP,
	BL_NR_VERBS
};

static const char * const bl_verb_names[BL_NR_VERBS] = {
	[BL_ALLOC] = "alloc",
	[BL_FREE] = "free",
	[BL_FREE_IDS] = "free_ids",
	[BL_FREE_ALL] = "free_all",
	[BL_LEAK] = "leak",
	[BL_FILL] = "fill",
	[BL_CLEAR_LOG] = "clear_log",
	[BL_KSWEEP] = "ksweep",
};

/* Indexed by migratetype, as /proc/pagetypeinfo names them. */
static const char * const bl_mt_names[] = {
	"Unmovable",
	"Movable",
	"Reclaimable",
	"HighAtomic",
#ifdef CONFIG_CMA
	"CMA",
#endif
#ifdef CONFIG_MEMORY_ISOLATION
	"Isolate",
#endif
};

static_assert(ARRAY_SIZE(bl_mt_names) == MIGRATE_TYPES);

/* Command keys, with the numeric range each accepts. */

enum bl_key {
	BL_K_API,
	BL_K_GFP,
	BL_K_ORDER,
	BL_K_SIZE,
	BL_K_ZERO,
	BL_K_COUNT,
	BL_K_ID,
	BL_K_FIRST,
	BL_K_LAST,
	BL_K_STEP,
	BL_K_MAX,
	BL_NR_KEYS
};

#define BIT_K(k)	BIT(BL_K_##k)

struct bl_keydef {
	const char *name;
	const char * const *names;	/* value is one of these names */
	unsigned int nr_names;
	u64 min;
	u64 max;
};

static const struct bl_keydef bl_keys[BL_NR_KEYS] = {
	[BL_K_API] = { "api", bl_api_names, BL_NR_APIS, 0, 0 },
	[BL_K_GFP] = { "gfp", bl_gfp_names, BL_NR_GFPS, 0, 0 },
	[BL_K_ORDER] = { "order", NULL, 0, 0, MAX_ORDER - 1 },
	[BL_K_SIZE] = { "size", NULL, 0, 1, PAGE_SIZE << (MAX_ORDER - 1) },
	[BL_K_ZERO] = { "zero", NULL, 0, 1, 1 },
	[BL_K_COUNT] = { "count", NULL, 0, 1, BL_MAX_COUNT },
	[BL_K_ID] = { "id", NULL, 0, 1, U64_MAX },
	[BL_K_FIRST] = { "first", NULL, 0, 1, U64_MAX },
	[BL_K_LAST] = { "last", NULL, 0, 1, U64_MAX },
	[BL_K_STEP] = { "step", NULL, 0, 1, U64_MAX },
	[BL_K_MAX] = { "max", NULL, 0, 1, BL_MAX_FILL },
};

struct bl_verbdef {
	u32 allowed;
	u32 required;
};

static const struct bl_verbdef bl_verbs[BL_NR_VERBS] = {
	[BL_ALLOC] = { BIT_K(API) | BIT_K(GFP) | BIT_K(ORDER) | BIT_K(SIZE) |
		       BIT_K(ZERO) | BIT_K(COUNT), BIT_K(API) | BIT_K(GFP) },
	[BL_FREE] = { BIT_K(ID), BIT_K(ID) },
	[BL_FREE_IDS] = { BIT_K(FIRST) | BIT_K(LAST) | BIT_K(STEP),
			  BIT_K(FIRST) | BIT_K(LAST) },
	[BL_FREE_ALL] = { 0, 0 },
	[BL_LEAK] = { BIT_K(ID) | BIT_K(ORDER), BIT_K(ID) | BIT_K(ORDER) },
	[BL_FILL] = { BIT_K(API) | BIT_K(GFP) | BIT_K(ORDER) | BIT_K(MAX),
		      BIT_K(API) | BIT_K(GFP) | BIT_K(ORDER) },
	[BL_CLEAR_LOG] = { 0, 0 },
	[BL_KSWEEP] = { BIT_K(FIRST) | BIT_K(LAST) | BIT_K(STEP),
			BIT_K(FIRST) | BIT_K(LAST) },
};

struct bl_cmd {
	enum bl_verb verb;
	u32 seen;
	u64 val[BL_NR_KEYS];
};

/* Allocations held by the module, in an rbtree keyed by id. */

enum bl_alloc_state { BL_LIVE, BL_LEAKED };

struct bl_chunk;

struct bl_alloc {
	union {
		struct rb_node node;		/* held: in bl.allocs */
		struct bl_alloc *next_free;	/* in the pool's free list */
	};
	struct bl_chunk *chunk;	/* NULL for an entry of the pool */
	u64 id;
	unsigned long pfn;	/* first pfn still held */
	u32 bytes;		/* bytes requested */
	u32 pages;		/* pages still held */
	u16 nid;
	u8 zidx;		/* zone index within its node */
	u8 api;
	u8 gfp;
	u8 zero;
	u8 order;		/* order of the allocation */
	u8 leak_order;		/* order of the leak free, if leaked */
	u8 mt;			/* pageblock type at allocation time */
	u8 state;
};

/*
 * Tracking entries come from the pool allocated at load.  A command that
 * may need more entries than the pool has left gets a chunk of its own,
 * allocated before its first snapshot and freed after the last snapshot
 * of the command that frees its last entry.
 */
struct bl_chunk {
	struct list_head gc;
	unsigned long live;
	unsigned long used;
	unsigned long cap;
	struct bl_alloc ent[];
};

/* The op log: a ring of records with two snapshots each. */

enum { BL_BEFORE, BL_AFTER, BL_NR_WHEN };

#define BL_OP_ID	BIT(0)	/* id= */
#define BL_OP_COUNT	BIT(1)	/* n= pages= */
#define BL_OP_REQ	BIT(2)	/* api= gfp= order= bytes= */
#define BL_OP_BLOCK	BIT(3)	/* nid= zone= pfn= */
#define BL_OP_STOP	BIT(4)	/* stop= */

/* Why an alloc or fill command stopped. */
enum bl_stop { BL_STOP_COUNT, BL_STOP_NOMEM, BL_STOP_WATERMARK, BL_NR_STOPS };

static const char * const bl_stop_names[BL_NR_STOPS] = {
	[BL_STOP_COUNT] = "count",
	[BL_STOP_NOMEM] = "nomem",
	[BL_STOP_WATERMARK] = "watermark",
};

struct bl_op {
	u64 seq;
	u64 id;
	u64 n;
	u64 pages;
	u64 bytes;
	unsigned long pfn;
	int ret;
	int cpu;
	u16 nid;
	u8 zidx;
	u8 verb;
	u8 api;
	u8 gfp;
	u8 zero;
	u8 order;
	u8 stop;
	u8 flags;
};

struct bl_zsnap {
	u32 free[MIGRATE_TYPES][MAX_ORDER];
};

struct bl_psnap {
	int count;
	int high;
	int batch;
	int free_factor;	/* 6.1: how far nr_pcp_free() scales batch */
	int vmstat_diff;	/* this CPU's NR_FREE_PAGES delta not yet in the zone's */
	int stat_threshold;
	u32 lists[BL_PCP_LISTS];
	bool valid;
};

/*
 * The module's state, in one place.  What protects each member:
 * [lock]  bl.lock, the module mutex: every command, every read of allocs
 *         and log, and every freelists or pageblocks capture hold it.
 *         What the log's slots and snapshots hold is written by the
 *         command's worker and by IPIs on other CPUs while the writer
 *         holds the mutex and waits for them.
 * [load]  set at load before the debugfs files exist and left unchanged
 *         until unload, after the files are gone: read without a lock.
 */
static struct bl_state {
	struct mutex lock;		/* the module mutex: see [lock] */

	/* Allocations held and their tracking entries [lock] */
	struct rb_root allocs;		/* struct bl_alloc by id */
	u64 next_id;			/* ids are never reused */
	struct list_head gc;		/* chunks with no live entry left */
	struct bl_alloc *pool_free;	/* the pool's free entries */
	unsigned long pool_nfree;

	/* The op log: a ring of log_cap records [lock] */
	unsigned int log_head;		/* slot of the oldest record */
	unsigned int log_count;
	u64 log_dropped;
	u64 next_seq;

	u64 dump_gen;			/* images taken since load [lock] */

	/* [load] */
	struct bl_alloc *pool;		/* BL_POOL_SIZE entries */
	struct zone **zones;		/* zones populated at load time */
	unsigned int nr_zones;
	unsigned int log_cap;
	struct bl_op *ops;		/* log_cap op records */
	struct bl_zsnap *zsnaps;	/* per op: before, after; per zone */
	struct bl_psnap *psnaps;	/* per op: before, after; per CPU, zone */
	struct workqueue_struct *wq;
	struct dentry *dir;
	int boost_factor;		/* see bl_max_boost() */
	/* dump_reserve=1: an image buffer per image kind, and their capacities */
	struct bl_image *reserve[2];
	size_t reserve_cap[2];
	unsigned long reserve_busy;	/* bit BL_RES_*: that buffer is in use */
} bl = {
	.lock = __MUTEX_INITIALIZER(bl.lock),
	.allocs = RB_ROOT,
	.next_id = 1,
	.gc = LIST_HEAD_INIT(bl.gc),
	.next_seq = 1,
	.boost_factor = BL_DEFAULT_BOOST_FACTOR,
};

/* Zones and pageblocks */

static const char *bl_zone_name(int nid, int zidx)
{
	return NODE_DATA(nid)->node_zones[zidx].name;
}

/* Count the populated zones, storing the first @cap of them in @out. */
static unsigned int bl_collect_zones(struct zone **out, unsigned int cap)
{
	unsigned int n = 0;
	int nid, z;

	for_each_online_node(nid) {
		for (z = 0; z < MAX_NR_ZONES; z++) {
			struct zone *zone = &NODE_DATA(nid)->node_zones[z];

			if (!populated_zone(zone))
				continue;
			if (n < cap)
				out[n] = zone;
			n++;
		}
	}
	return n;
}

/*
 * The pageblock's migratetype, read from its section's usemap as
 * __get_pfnblock_flags_mask() does under CONFIG_SPARSEMEM.  The module
 * reads the bitmap itself because get_pfnblock_flags_mask() is not
 * exported to modules in 5.10, and get_pageblock_migratetype() is a
 * macro around it.
 */
static unsigned int bl_pageblock_mt(unsigned long pfn)
{
	unsigned long *bitmap = section_to_usemap(__pfn_to_section(pfn));
	unsigned long bitidx;
	unsigned long word;

	bitidx = ((pfn & (PAGES_PER_SECTION - 1)) >> pageblock_order) *
		 NR_PAGEBLOCK_BITS;
	word = READ_ONCE(bitmap[bitidx / BITS_PER_LONG]);
	return (word >> (bitidx % BITS_PER_LONG)) & MIGRATETYPE_MASK;
}

static const char *bl_mt_name(unsigned int mt)
{
	return mt < MIGRATE_TYPES ? bl_mt_names[mt] : "Unknown";
}

/* Walk a list, stopping at @bound entries should it ever be corrupt. */
static u32 bl_list_len(struct list_head *head, unsigned long bound)
{
	struct list_head *pos;
	u32 n = 0;

	list_for_each(pos, head) {
		if (++n >= bound)
			break;
	}
	return n;
}

/* Snapshots */

static struct bl_zsnap *bl_zsnap_at(unsigned int slot, int when)
{
	return &bl.zsnaps[(slot * BL_NR_WHEN + when) * bl.nr_zones];
}

static struct bl_psnap *bl_psnap_at(unsigned int slot, int when)
{
	size_t per = (size_t)nr_cpu_ids * bl.nr_zones;

	return &bl.psnaps[(slot * BL_NR_WHEN + when) * per];
}

/* Count the free blocks of every list of every zone, each under its lock. */
static void bl_snap_zones(struct bl_zsnap *zs)
{
	unsigned int i, o, mt;

	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *zone = bl.zones[i];

		spin_lock(&zone->lock);
		for (o = 0; o < MAX_ORDER; o++) {
			struct free_area *area = &zone->free_area[o];

			for (mt = 0; mt < MIGRATE_TYPES; mt++)
				zs[i].free[mt][o] =
					bl_list_len(&area->free_list[mt],
						    zone->spanned_pages);
		}
		spin_unlock(&zone->lock);
	}
}

/*
 * Read @cpu's per-CPU lists of every zone into its slots of @ps, with
 * interrupts off.  On 5.10 it must run on @cpu itself: in an IPI, or
 * within bl_snap_take()'s own interrupts-off section.  On 6.1 it may run
 * anywhere, each zone's lists under their pcp->lock.  Interrupts stay off
 * (and on 6.1 pcp->lock held) for one walk of @cpu's lists of every zone,
 * that is about pcp->count list steps per zone (each walk also stops at
 * the zone's spanned pages).
 */
static void bl_snap_cpu(struct bl_psnap *ps, int cpu)
{
	unsigned int i, t;

	ps += cpu * bl.nr_zones;
	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *zone = bl.zones[i];
		struct per_cpu_pages *pcp = bl_pcp(zone, cpu);

		bl_pcp_lock(pcp);
		ps[i].count = pcp->count;
		ps[i].high = pcp->high;
		ps[i].batch = pcp->batch;
		ps[i].free_factor = bl_pcp_free_factor(pcp);
		ps[i].vmstat_diff =
			bl_vmstat(zone, cpu)->vm_stat_diff[NR_FREE_PAGES];
		ps[i].stat_threshold = bl_vmstat(zone, cpu)->stat_threshold;
		for (t = 0; t < BL_PCP_LISTS; t++)
			ps[i].lists[t] = bl_list_len(&pcp->lists[t],
						     zone->spanned_pages);
		ps[i].valid = true;
		bl_pcp_unlock(pcp);
	}
}

#if BL_PCP_BY_ORDER
/* Another CPU's lists, read from here under their locks (6.1). */
static void bl_snap_other(struct bl_psnap *ps, int cpu)
{
	unsigned long flags;

	local_irq_save(flags);
	bl_snap_cpu(ps, cpu);
	local_irq_restore(flags);
}
#else
static void bl_snap_ipi(void *arg)
{
	bl_snap_cpu(arg, smp_processor_id());
}

/* Another CPU's lists, read by that CPU in an IPI (5.10). */
static void bl_snap_other(struct bl_psnap *ps, int cpu)
{
	smp_call_function_single(cpu, bl_snap_ipi, ps, 1);
}
#endif

/*
 * The local CPU's lists and every zone are read in one interrupts-off
 * section; other CPUs' lists are read right after: by those CPUs in an
 * IPI on 5.10, from here under each list's lock on 6.1.
 *
 * How long interrupts stay off here: one walk of every free list of every
 * zone plus this CPU's per-CPU lists, so linear in the number of free
 * blocks and per-CPU pages (at most the managed pages, about 120,000 in
 * the 512 MiB guest; each list walk also stops at its zone's spanned
 * pages).  Nothing in it sleeps or allocates; it waits only for each
 * zone->lock in turn, never for another CPU (the IPIs come after).
 */
static void bl_snap_take(unsigned int slot, int when, u64 seq)
{
	struct bl_psnap *ps = bl_psnap_at(slot, when);
	unsigned long flags;
	int cpu, self;

	memset(ps, 0, sizeof(*ps) * nr_cpu_ids * bl.nr_zones);
	local_irq_save(flags);
	self = smp_processor_id();
	bl_snap_zones(bl_zsnap_at(slot, when));
	bl_snap_cpu(ps, self);
	trace_buddylab_snapshot(seq, when == BL_AFTER);
	local_irq_restore(flags);

	for_each_online_cpu(cpu) {
		if (cpu != self)
			bl_snap_other(ps, cpu);
	}
}

/* The op log */

static void bl_log_reset(void)
{
	bl.log_head = 0;
	bl.log_count = 0;
	bl.log_dropped = 0;
}

static unsigned int bl_log_claim(void)
{
	unsigned int slot;

	if (bl.log_count == bl.log_cap) {
		bl.log_head = (bl.log_head + 1) % bl.log_cap;
		bl.log_count--;
		bl.log_dropped++;
	}
	slot = (bl.log_head + bl.log_count) % bl.log_cap;
	bl.log_count++;
	memset(&bl.ops[slot], 0, sizeof(bl.ops[slot]));
	bl.ops[slot].seq = bl.next_seq++;
	return slot;
}

/* The slot holding record @seq, or -1. */
static int bl_log_find(u64 seq)
{
	u64 oldest;

	if (!bl.log_count)
		return -1;
	oldest = bl.ops[bl.log_head].seq;
	if (seq < oldest || seq - oldest >= bl.log_count)
		return -1;
	return (bl.log_head + (seq - oldest)) % bl.log_cap;
}

static int bl_log_alloc(void)
{
	size_t per_op = sizeof(struct bl_op) +
		BL_NR_WHEN * bl.nr_zones * (sizeof(struct bl_zsnap) +
		nr_cpu_ids * sizeof(struct bl_psnap));
	size_t cap = min_t(size_t, BL_LOG_CAP, BL_LOG_BUDGET / per_op);

	bl.log_cap = max_t(size_t, cap, 1);
	bl.ops = kvcalloc(bl.log_cap, sizeof(*bl.ops), BL_GFP_OWN);
	bl.zsnaps = kvcalloc(bl.log_cap * BL_NR_WHEN * bl.nr_zones,
			     sizeof(*bl.zsnaps), BL_GFP_OWN);
	bl.psnaps = kvcalloc(bl.log_cap * BL_NR_WHEN * bl.nr_zones,
			     nr_cpu_ids * sizeof(*bl.psnaps), BL_GFP_OWN);
	if (!bl.ops || !bl.zsnaps || !bl.psnaps)
		return -ENOMEM;
	return 0;
}

static void bl_log_free(void)
{
	kvfree(bl.psnaps);
	kvfree(bl.zsnaps);
	kvfree(bl.ops);
}

/* Tracking entries */

static int bl_pool_init(void)
{
	unsigned long i;

	bl.pool = kvcalloc(BL_POOL_SIZE, sizeof(*bl.pool), BL_GFP_OWN);
	if (!bl.pool)
		return -ENOMEM;
	for (i = BL_POOL_SIZE; i > 0; i--) {
		bl.pool[i - 1].next_free = bl.pool_free;
		bl.pool_free = &bl.pool[i - 1];
	}
	bl.pool_nfree = BL_POOL_SIZE;
	return 0;
}

/* Only while bl.pool_nfree says an entry is left. */
static struct bl_alloc *bl_pool_get(void)
{
	struct bl_alloc *a = bl.pool_free;

	bl.pool_free = a->next_free;
	bl.pool_nfree--;
	memset(a, 0, sizeof(*a));
	return a;
}

static void bl_pool_put(struct bl_alloc *a)
{
	a->next_free = bl.pool_free;
	bl.pool_free = a;
	bl.pool_nfree++;
}

static struct bl_chunk *bl_chunk_new(unsigned long cap)
{
	struct bl_chunk *c;

	c = kvzalloc(struct_size(c, ent, cap), BL_GFP_OWN);
	if (c)
		c->cap = cap;
	return c;
}

/* Give up a chunk no entry of which is live; freed after the op. */
static void bl_chunk_put(struct bl_chunk *c)
{
	if (c && !c->live)
		list_add_tail(&c->gc, &bl.gc);
}

static void bl_gc_flush(void)
{
	struct bl_chunk *c, *tmp;

	list_for_each_entry_safe(c, tmp, &bl.gc, gc) {
		list_del(&c->gc);
		kvfree(c);
	}
}

static void bl_insert(struct bl_alloc *a)
{
	struct rb_node **link = &bl.allocs.rb_node, *parent = NULL;

	while (*link) {
		parent = *link;
		if (a->id < rb_entry(parent, struct bl_alloc, node)->id)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&a->node, parent, link);
	rb_insert_color(&a->node, &bl.allocs);
}

/* The live entry with the smallest id >= @id, or NULL. */
static struct bl_alloc *bl_find_ge(u64 id)
{
	struct rb_node *n = bl.allocs.rb_node;
	struct bl_alloc *best = NULL;

	while (n) {
		struct bl_alloc *a = rb_entry(n, struct bl_alloc, node);

		if (a->id < id) {
			n = n->rb_right;
		} else {
			best = a;
			n = n->rb_left;
		}
	}
	return best;
}

static struct bl_alloc *bl_next(struct bl_alloc *a)
{
	struct rb_node *n = rb_next(&a->node);

	return n ? rb_entry(n, struct bl_alloc, node) : NULL;
}

/* Allocating and freeing through each entry point */

static gfp_t bl_gfp(const struct bl_cmd *cmd, bool fill)
{
	gfp_t gfp = bl_gfp_flags[cmd->val[BL_K_GFP]] | __GFP_NOWARN;

	if (cmd->seen & BIT_K(ZERO))
		gfp |= __GFP_ZERO;
	if (fill)
		gfp |= __GFP_NORETRY;
	else if (gfpflags_allow_blocking(gfp))
		gfp |= __GFP_RETRY_MAYFAIL;
	return gfp;
}

/*
 * bl.boost_factor: vm.watermark_boost_factor, read at load (the kernel
 * exports neither the variable nor a function that reads it), else the
 * kernel's default.  A change of the sysctl reaches the guard at the next
 * load.
 */
static void __init bl_read_boost_factor(void)
{
	char buf[16] = "";
	struct file *f;
	loff_t pos = 0;
	ssize_t n;
	int factor;

	f = filp_open("/proc/sys/vm/watermark_boost_factor", O_RDONLY, 0);
	if (IS_ERR(f))
		return;
	n = kernel_read(f, buf, sizeof(buf) - 1, &pos);
	filp_close(f, NULL);
	if (n > 0 && !kstrtoint(strim(buf), 10, &factor) && factor >= 0)
		bl.boost_factor = factor;
}

/*
 * The most that boost_watermark() (mm/page_alloc.c) can add to each of
 * @z's watermarks: every fallback steal of a part of a pageblock, by any
 * allocation, raises them by a pageblock, up to this.  Only kswapd takes
 * a boost back, after a reclaim pass, and until it has run, someone
 * else's request sees a min watermark raised by as much.
 */
static unsigned long bl_max_boost(struct zone *z)
{
	unsigned long max_boost;

	if (!bl.boost_factor || pageblock_nr_pages * 4 > zone_managed_pages(z))
		return 0;
	max_boost = mult_frac(z->_watermark[WMARK_HIGH], bl.boost_factor, 10000);
	if (!max_boost)
		return 0;
	return max_t(unsigned long, max_boost, pageblock_nr_pages);
}

/*
 * Whether the module may take @pages more pages now.  The zone the
 * allocator would take them from is the first one of the local node's
 * zonelist for @gfp that has pages above its lowmem reserve for the
 * request; that zone must keep more than a watermark free afterwards,
 * not counting its HighAtomic reserve nor one per-CPU refill of batch
 * pages, nor @extra (the pageblock a GFP_ATOMIC order > 0 success may
 * add to that reserve).
 *
 * The watermark is the high one: the allocator then stays on its fast
 * path, and the guest keeps the margin between the high and the min
 * watermark for its own work (measured: one per-CPU batch was not enough
 * beside two SSH sessions and a reader forking cat, the fuzz test's; the
 * OOM killer took dropbear, also with boosting off).  With noreclaim_min=1
 * a NORECLAIM mask's watermark is the min one: such a mask cannot reclaim,
 * compact or call the OOM killer itself, so the allocator may refuse it on
 * its own (at the low watermark on the fast path, the min one on the slow
 * path), and the guard keeps the zone above the min watermark by one
 * refill, so that someone else's order-0 allocation still succeeds
 * without reclaim.  That line is for a guest that runs nothing else
 * meanwhile (the pressure workload).
 *
 * The watermark is taken at its highest boost (bl_max_boost()), not at
 * the boost of the moment: the module's blocks stay taken while a later
 * fallback steal (the module's own next block, or anyone's) boosts the
 * watermarks, and the guest's memory cannot be reclaimed (an initramfs,
 * no swap), so a request of someone else's that meets a boosted min
 * watermark above the free pages ends in the OOM killer before kswapd
 * has taken the boost back.  The fuzz test lost its SSH connection so:
 * dropbear was killed with DMA32 at 2,171 free pages, a HighAtomic reserve
 * of 512 and its min watermark boosted from about 660 to 2,150.  With
 * vm.watermark_boost_factor=0 (as the pressure workload runs) there is
 * no boost and the guard is the plain watermark.
 */
static bool bl_headroom(gfp_t gfp, unsigned long pages, unsigned long extra)
{
	int cpu = raw_smp_processor_id();
	enum zone_type high = gfp_zone(gfp);
	struct zoneref *zr;
	long free, keep;

	zr = node_zonelist(cpu_to_node(cpu), gfp)->_zonerefs;
	for (; zr->zone; zr++) {
		struct zone *z = zr->zone;

		if (zonelist_zone_idx(zr) > high)
			continue;
		free = zone_page_state_snapshot(z, NR_FREE_PAGES) - (long)pages;
		if (free <= (long)z->lowmem_reserve[high])
			continue;
		keep = z->_watermark[gfp & __GFP_RECLAIM || !noreclaim_min ?
				     WMARK_HIGH : WMARK_MIN] +
		       max(READ_ONCE(z->watermark_boost), bl_max_boost(z)) +
		       z->lowmem_reserve[high] +
		       READ_ONCE(z->nr_reserved_highatomic) +
		       READ_ONCE(bl_pcp(z, cpu)->batch) + extra;
		return free > keep;
	}
	return false;
}

/* The guard for one block of an alloc or fill command. */
static bool bl_block_headroom(unsigned int api, gfp_t gfp, unsigned int order)
{
	if (api != BL_ALLOC_PAGES && api != BL_ALLOC_PAGE)
		gfp &= ~__GFP_HIGHMEM;	/* as __get_free_pages() does */
	return bl_headroom(gfp, 1UL << order,
			   order && (gfp & __GFP_ATOMIC) ? pageblock_nr_pages : 0);
}

static struct page *bl_addr_page(unsigned long addr)
{
	return addr ? virt_to_page((void *)addr) : NULL;
}

static struct page *bl_get(unsigned int api, gfp_t gfp, unsigned int order,
			   size_t size)
{
	switch (api) {
	case BL_ALLOC_PAGES:
		return alloc_pages(gfp, order);
	case BL_ALLOC_PAGE:
		return alloc_page(gfp);
	case BL_GFP_PAGES:
		return bl_addr_page(__get_free_pages(gfp, order));
	case BL_GFP_PAGE:
		return bl_addr_page(__get_free_page(gfp));
	case BL_ZEROED_PAGE:
		return bl_addr_page(get_zeroed_page(gfp));
	default:
		/*
		 * 6.1's alloc_pages_exact() WARNs on __GFP_HIGHMEM before removing
		 * it; 5.10's leaves it to __get_free_pages(), which removes it
		 * silently.  Removed here, the block is the same on both.
		 */
		return bl_addr_page((unsigned long)alloc_pages_exact(size,
						gfp & ~__GFP_HIGHMEM));
	}
}

/* Free an order-@order block the way its api frees. */
static void bl_put_block(unsigned int api, unsigned long pfn,
			 unsigned int order)
{
	struct page *page = pfn_to_page(pfn);

	if (api == BL_ALLOC_PAGES || api == BL_ALLOC_PAGE)
		__free_pages(page, order);
	else
		free_pages((unsigned long)page_address(page), order);
}

/* Return every page @a still holds; the number of pages. */
static u32 bl_put(struct bl_alloc *a)
{
	unsigned long base;
	unsigned int j;

	if (a->state == BL_LEAKED) {
		base = a->pfn - (1UL << a->leak_order);
		for (j = a->leak_order; j < a->order; j++)
			bl_put_block(a->api, base + (1UL << j), j);
	} else if (a->api == BL_PAGES_EXACT) {
		free_pages_exact(page_address(pfn_to_page(a->pfn)), a->bytes);
	} else {
		bl_put_block(a->api, a->pfn, a->order);
	}
	return a->pages;
}

static void bl_forget(struct bl_alloc *a)
{
	struct bl_chunk *c = a->chunk;

	rb_erase(&a->node, &bl.allocs);
	if (!c) {
		bl_pool_put(a);
		return;
	}
	c->live--;
	bl_chunk_put(c);
}

/* Command execution, in a worker bound to the writer's CPU */

struct bl_run {
	struct work_struct work;
	struct completion done;
	const struct bl_cmd *cmd;
	struct bl_chunk *chunk;	/* entries from here, if not from the pool */
	unsigned long max;	/* blocks the command may allocate */
	bool pool;		/* entries from the pool */
	bool no_room;		/* the guard refused a tracking block */
	struct bl_op *op;
	unsigned int slot;
};

static void bl_op_block(struct bl_op *op, const struct bl_alloc *a)
{
	op->flags |= BL_OP_REQ | BL_OP_BLOCK;
	op->api = a->api;
	op->gfp = a->gfp;
	op->zero = a->zero;
	op->order = a->order;
	op->bytes = a->bytes;
	op->nid = a->nid;
	op->zidx = a->zidx;
	op->pfn = a->pfn;
}

static void bl_fill_entry(struct bl_alloc *a, const struct bl_cmd *cmd,
			  struct page *page)
{
	unsigned int api = cmd->val[BL_K_API];

	a->id = bl.next_id++;
	a->pfn = page_to_pfn(page);
	a->nid = page_to_nid(page);
	a->zidx = page_zonenum(page);
	a->api = api;
	a->gfp = cmd->val[BL_K_GFP];
	a->zero = api == BL_ZEROED_PAGE || (cmd->seen & BIT_K(ZERO));
	if (api == BL_PAGES_EXACT) {
		a->bytes = cmd->val[BL_K_SIZE];
		a->order = get_order(a->bytes);
		a->pages = DIV_ROUND_UP(a->bytes, PAGE_SIZE);
	} else {
		a->order = cmd->val[BL_K_ORDER];
		a->bytes = PAGE_SIZE << a->order;
		a->pages = 1U << a->order;
	}
	a->mt = bl_pageblock_mt(a->pfn);
	a->state = BL_LIVE;
}

static void bl_op_request(struct bl_op *op, const struct bl_cmd *cmd)
{
	unsigned int api = cmd->val[BL_K_API];

	op->flags |= BL_OP_COUNT | BL_OP_REQ | BL_OP_STOP;
	op->api = api;
	op->gfp = cmd->val[BL_K_GFP];
	op->zero = api == BL_ZEROED_PAGE || (cmd->seen & BIT_K(ZERO));
	if (api == BL_PAGES_EXACT) {
		op->order = get_order(cmd->val[BL_K_SIZE]);
		op->bytes = cmd->val[BL_K_SIZE];
	} else {
		op->order = cmd->val[BL_K_ORDER];
		op->bytes = PAGE_SIZE << op->order;
	}
}

static void bl_op_add(struct bl_op *op, const struct bl_alloc *a)
{
	if (!op->n) {
		bl_op_block(op, a);
		op->flags |= BL_OP_ID;
		op->id = a->id;
	}
	op->n++;
	op->pages += a->pages;
}

/* A tracking entry of those bl_prepare() set aside for @run. */
static struct bl_alloc *bl_entry_get(struct bl_run *run)
{
	struct bl_chunk *c = run->chunk;
	struct bl_alloc *a;

	if (run->pool)
		return bl_pool_get();
	a = &c->ent[c->used++];
	a->chunk = c;
	return a;
}

/* alloc and fill: up to run->max blocks, stopping at the first failure. */
static int bl_exec_alloc(struct bl_run *run, bool fill)
{
	const struct bl_cmd *cmd = run->cmd;
	gfp_t gfp = bl_gfp(cmd, fill);
	struct bl_op *op = run->op;
	struct bl_alloc *a;
	struct page *page;

	bl_op_request(op, cmd);
	op->stop = run->no_room ? BL_STOP_WATERMARK : BL_STOP_NOMEM;
	if (!run->pool && !run->chunk)
		return -ENOMEM;

	while (op->n < run->max) {
		if (!bl_block_headroom(op->api, gfp, op->order)) {
			op->stop = BL_STOP_WATERMARK;
			return -ENOMEM;
		}
		page = bl_get(op->api, gfp, op->order, cmd->val[BL_K_SIZE]);
		if (!page)
			return -ENOMEM;
		a = bl_entry_get(run);
		bl_fill_entry(a, cmd, page);
		bl_insert(a);
		if (a->chunk)
			a->chunk->live++;
		bl_op_add(op, a);
		cond_resched();
	}
	op->stop = BL_STOP_COUNT;
	return 0;
}

/* Free the live entries with ids in [first, last] at the given step. */
static int bl_exec_free_ids(struct bl_op *op, u64 first, u64 last, u64 step)
{
	struct bl_alloc *a = bl_find_ge(first), *next;

	op->flags |= BL_OP_COUNT;
	for (; a && a->id <= last; a = next) {
		next = bl_next(a);
		if ((a->id - first) % step)
			continue;
		if (!op->n) {
			op->flags |= BL_OP_ID;
			op->id = a->id;
		}
		op->pages += bl_put(a);
		op->n++;
		bl_forget(a);
		cond_resched();
	}
	return 0;
}

static struct bl_alloc *bl_lookup(struct bl_op *op, u64 id)
{
	struct bl_alloc *a = bl_find_ge(id);

	op->flags |= BL_OP_ID | BL_OP_COUNT;
	op->id = id;
	if (!a || a->id != id)
		return NULL;
	bl_op_block(op, a);
	return a;
}

static int bl_exec_free(struct bl_op *op, u64 id)
{
	struct bl_alloc *a = bl_lookup(op, id);

	if (!a)
		return -ENOENT;
	op->pages = bl_put(a);
	op->n = 1;
	bl_forget(a);
	return 0;
}

/*
 * The mistake of the book's ch8/lowlevel_mem: __free_pages(page, k) on a
 * non-compound order-m block with k < m.  The head's refcount drops to
 * zero and the first 2^k pages go back; pages 2^k .. 2^m - 1 stay out of
 * every list, refcount zero.  Each of them belongs to one of the aligned
 * blocks of order k .. m-1 that follow; their heads get a reference first
 * so that the module can free those blocks later.
 */
static int bl_exec_leak(struct bl_op *op, u64 id, unsigned int k)
{
	struct bl_alloc *a = bl_lookup(op, id);
	unsigned int j;

	if (!a)
		return -ENOENT;
	if (a->state != BL_LIVE || k >= a->order ||
	    (a->api != BL_ALLOC_PAGES && a->api != BL_GFP_PAGES))
		return -EINVAL;

	for (j = k; j < a->order; j++)
		init_page_count(pfn_to_page(a->pfn + (1UL << j)));
	bl_put_block(a->api, a->pfn, k);

	a->state = BL_LEAKED;
	a->leak_order = k;
	a->pfn += 1UL << k;
	a->pages -= 1U << k;
	op->n = 1;
	op->pages = 1U << k;
	return 0;
}

static unsigned long bl_fill_bound(unsigned int order)
{
	unsigned long pages = 0;
	unsigned int i;

	for (i = 0; i < bl.nr_zones; i++)
		pages += zone_managed_pages(bl.zones[i]);
	return (pages >> order) + 1;
}

static int bl_exec_ksweep(struct bl_op *op, u64 first, u64 last, u64 step);

static int bl_exec(struct bl_run *run)
{
	const struct bl_cmd *cmd = run->cmd;
	const u64 *v = cmd->val;

	switch (cmd->verb) {
	case BL_ALLOC:
		return bl_exec_alloc(run, false);
	case BL_FILL:
		return bl_exec_alloc(run, true);
	case BL_FREE:
		return bl_exec_free(run->op, v[BL_K_ID]);
	case BL_FREE_IDS:
		return bl_exec_free_ids(run->op, v[BL_K_FIRST], v[BL_K_LAST],
					v[BL_K_STEP]);
	case BL_FREE_ALL:
		return bl_exec_free_ids(run->op, 1, U64_MAX, 1);
	case BL_LEAK:
		return bl_exec_leak(run->op, v[BL_K_ID], v[BL_K_ORDER]);
	case BL_KSWEEP:
		return bl_exec_ksweep(run->op, v[BL_K_FIRST], v[BL_K_LAST],
				      v[BL_K_STEP]);
	default:
		return 0;
	}
}

static void bl_work(struct work_struct *work)
{
	struct bl_run *run = container_of(work, struct bl_run, work);

	run->op->cpu = raw_smp_processor_id();
	bl_snap_take(run->slot, BL_BEFORE, run->op->seq);
	run->op->ret = bl_exec(run);
	bl_snap_take(run->slot, BL_AFTER, run->op->seq);
	complete(&run->done);
}

/*
 * Set aside the tracking entries an alloc or fill may need, before its
 * first snapshot: from the pool if it has enough left, which allocates
 * nothing, or else in a chunk of their own, which the watermark guard
 * must allow like the blocks themselves.
 */
static void bl_prepare(struct bl_run *run)
{
	const struct bl_cmd *cmd = run->cmd;
	struct bl_chunk *c;
	unsigned long n;

	if (cmd->verb == BL_ALLOC) {
		n = cmd->val[BL_K_COUNT];
	} else {
		n = bl_fill_bound(cmd->val[BL_K_ORDER]);
		if (cmd->seen & BIT_K(MAX))
			n = min_t(unsigned long, n, cmd->val[BL_K_MAX]);
	}
	run->max = n;
	if (n <= bl.pool_nfree)
		run->pool = true;
	else if (bl_headroom(GFP_KERNEL,
			     DIV_ROUND_UP(struct_size(c, ent, n), PAGE_SIZE), 0))
		run->chunk = bl_chunk_new(n);
	else
		run->no_room = true;
}

static int bl_run_cmd(const struct bl_cmd *cmd)
{
	struct bl_run run = { .cmd = cmd };
	int ret;

	mutex_lock(&bl.lock);
	if (cmd->verb == BL_CLEAR_LOG)
		bl_log_reset();
	if (cmd->verb == BL_ALLOC || cmd->verb == BL_FILL)
		bl_prepare(&run);
	run.slot = bl_log_claim();
	run.op = &bl.ops[run.slot];
	run.op->verb = cmd->verb;

	/*
	 * Wait for the work itself, not with flush_work(): its barrier is
	 * not counted by drain_workqueue(), and destroy_workqueue() at
	 * unload could race with the worker dropping the barrier's pwq.
	 */
	INIT_WORK_ONSTACK(&run.work, bl_work);
	init_completion(&run.done);
	queue_work_on(raw_smp_processor_id(), bl.wq, &run.work);
	wait_for_completion(&run.done);
	destroy_work_on_stack(&run.work);

	ret = run.op->ret;
	bl_chunk_put(run.chunk);
	bl_gc_flush();
	mutex_unlock(&bl.lock);
	return ret;
}

/* Parsing */

static int bl_match(const char *s, const char * const *names, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (!strcmp(s, names[i]))
			return i;
	}
	return -EINVAL;
}

static int bl_parse_value(const struct bl_keydef *k, const char *s, u64 *out)
{
	int i;

	if (k->names) {
		i = bl_match(s, k->names, k->nr_names);
		if (i < 0)
			return i;
		*out = i;
		return 0;
	}
	if (!*s || strlen(s) > 20 || strspn(s, "0123456789") != strlen(s))
		return -EINVAL;
	if (kstrtou64(s, 10, out) || *out < k->min || *out > k->max)
		return -EINVAL;
	return 0;
}

static int bl_parse_arg(struct bl_cmd *cmd, char *tok)
{
	char *val = strchr(tok, '=');
	int key;

	if (!val)
		return -EINVAL;
	*val++ = '\0';
	for (key = 0; key < BL_NR_KEYS; key++) {
		if (!strcmp(tok, bl_keys[key].name))
			break;
	}
	if (key == BL_NR_KEYS || !(bl_verbs[cmd->verb].allowed & BIT(key)) ||
	    (cmd->seen & BIT(key)))
		return -EINVAL;
	cmd->seen |= BIT(key);
	return bl_parse_value(&bl_keys[key], val, &cmd->val[key]);
}

static bool bl_needs_order(unsigned int api)
{
	return api == BL_ALLOC_PAGES || api == BL_GFP_PAGES;
}

static int bl_ksweep_check(struct bl_cmd *cmd);

/* Rules that tie keys together. */
static int bl_check(struct bl_cmd *cmd)
{
	u64 *v = cmd->val;
	unsigned int api = v[BL_K_API];
	bool exact = api == BL_PAGES_EXACT;

	if ((cmd->seen & bl_verbs[cmd->verb].required) !=
	    bl_verbs[cmd->verb].required)
		return -EINVAL;
	switch (cmd->verb) {
	case BL_ALLOC:
		if (bl_needs_order(api) != !!(cmd->seen & BIT_K(ORDER)) ||
		    exact != !!(cmd->seen & BIT_K(SIZE)))
			return -EINVAL;
		if (!(cmd->seen & BIT_K(COUNT)))
			v[BL_K_COUNT] = 1;
		return 0;
	case BL_FILL:
		return api == BL_ALLOC_PAGES ? 0 : -EINVAL;
	case BL_FREE_IDS:
		if (!(cmd->seen & BIT_K(STEP)))
			v[BL_K_STEP] = 1;
		return v[BL_K_FIRST] <= v[BL_K_LAST] ? 0 : -EINVAL;
	case BL_KSWEEP:
		return bl_ksweep_check(cmd);
	default:
		return 0;
	}
}

/* @buf: NUL-terminated, newline already stripped. */
static int bl_parse(char *buf, struct bl_cmd *cmd)
{
	char *tok;
	int ret;

	memset(cmd, 0, sizeof(*cmd));
	for (tok = buf; *tok; tok++) {
		if (*tok != ' ' && (*tok < 0x21 || *tok > 0x7e))
			return -EINVAL;
	}
	tok = strsep(&buf, " ");
	ret = bl_match(tok, bl_verb_names, BL_NR_VERBS);
	if (ret < 0)
		return ret;
	cmd->verb = ret;
	while (buf) {
		tok = strsep(&buf, " ");
		ret = bl_parse_arg(cmd, tok);
		if (ret)
			return ret;
	}
	return bl_check(cmd);
}

static ssize_t bl_control_write(struct file *file, const char __user *ubuf,
				size_t len, loff_t *ppos)
{
	char buf[BL_CMD_MAX + 1];
	struct bl_cmd cmd;
	size_t n = len;
	int ret;

	if (!len || len > BL_CMD_MAX)
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[n] = '\0';
	if (buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (!n || strlen(buf) != n)
		return -EINVAL;

	ret = bl_parse(buf, &cmd);
	/* A leak that parses, refused before it is logged: see allow_leak. */
	if (!ret && cmd.verb == BL_LEAK && !allow_leak)
		ret = -EPERM;
	if (!ret)
		ret = bl_run_cmd(&cmd);
	return ret ? ret : len;
}

static const struct file_operations bl_control_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.write = bl_control_write,
	.llseek = no_llseek,
};

/* allocs: one line per live allocation; the seq_file position is the id */

static void *bl_allocs_start(struct seq_file *m, loff_t *pos)
{
	struct bl_alloc *a;

	mutex_lock(&bl.lock);
	a = bl_find_ge(max_t(u64, *pos, 1));
	if (a)
		*pos = a->id;
	return a;
}

static void *bl_allocs_next(struct seq_file *m, void *v, loff_t *pos)
{
	struct bl_alloc *a = v;

	*pos = a->id + 1;
	return bl_next(a);
}

static void bl_unlock_stop(struct seq_file *m, void *v)
{
	mutex_unlock(&bl.lock);
}

static int bl_allocs_show(struct seq_file *m, void *v)
{
	struct bl_alloc *a = v;

	seq_printf(m, "alloc id=%llu api=%s gfp=%s%s bytes=%u order=%u pages=%u",
		   a->id, bl_api_names[a->api], bl_gfp_names[a->gfp],
		   a->zero ? "|__GFP_ZERO" : "", a->bytes, a->order, a->pages);
	seq_printf(m, " pfn=%lu nid=%u zone=%s pageblock_mt=%s state=%s\n",
		   a->pfn, a->nid, bl_zone_name(a->nid, a->zidx),
		   bl_mt_name(a->mt), a->state == BL_LIVE ? "live" : "leaked");
	return 0;
}

static const struct seq_operations bl_allocs_sops = {
	.start = bl_allocs_start,
	.next = bl_allocs_next,
	.stop = bl_unlock_stop,
	.show = bl_allocs_show,
};

DEFINE_SEQ_ATTRIBUTE(bl_allocs);

/* log: a header, then each op with its snapshots; the position is the seq */

static void *bl_log_start(struct seq_file *m, loff_t *pos)
{
	u64 seq;
	int slot;

	mutex_lock(&bl.lock);
	if (!*pos)
		return SEQ_START_TOKEN;
	if (!bl.log_count)
		return NULL;
	seq = max_t(u64, *pos, bl.ops[bl.log_head].seq);
	slot = bl_log_find(seq);
	if (slot < 0)
		return NULL;
	*pos = seq;
	return &bl.ops[slot];
}

static void *bl_log_next(struct seq_file *m, void *v, loff_t *pos)
{
	u64 seq;
	int slot;

	if (v == SEQ_START_TOKEN)
		seq = bl.log_count ? bl.ops[bl.log_head].seq : 1;
	else
		seq = ((struct bl_op *)v)->seq + 1;
	*pos = seq;
	slot = bl_log_find(seq);
	return slot < 0 ? NULL : &bl.ops[slot];
}

static void bl_log_show_op(struct seq_file *m, const struct bl_op *op)
{
	seq_printf(m, "op seq=%llu verb=%s ret=%d cpu=%d", op->seq,
		   bl_verb_names[op->verb], op->ret, op->cpu);
	if (op->flags & BL_OP_ID)
		seq_printf(m, " id=%llu", op->id);
	if (op->flags & BL_OP_COUNT)
		seq_printf(m, " n=%llu pages=%llu", op->n, op->pages);
	if (op->flags & BL_OP_REQ)
		seq_printf(m, " api=%s gfp=%s%s order=%u bytes=%llu",
			   bl_api_names[op->api], bl_gfp_names[op->gfp],
			   op->zero ? "|__GFP_ZERO" : "", op->order, op->bytes);
	if (op->flags & BL_OP_BLOCK)
		seq_printf(m, " nid=%u zone=%s pfn=%lu", op->nid,
			   bl_zone_name(op->nid, op->zidx), op->pfn);
	if (op->flags & BL_OP_STOP)
		seq_printf(m, " stop=%s", bl_stop_names[op->stop]);
	seq_putc(m, '\n');
}

/*
 * The per-CPU list types are the first MIGRATE_PCPTYPES migratetypes, and
 * bl_mt_names[] names them Unmovable, Movable, Reclaimable: on 5.10 pcp
 * lists= prints exactly these three counts, on 6.1 these three per order
 * (then Unmovable, Movable at the THP order), and pcpage list= is
 * bl_mt_names[bl_pcp_mt()].
 */
static_assert(MIGRATE_UNMOVABLE == 0 && MIGRATE_MOVABLE == 1 &&
	      MIGRATE_RECLAIMABLE == 2 && MIGRATE_PCPTYPES == 3);

static void bl_log_show_snap(struct seq_file *m, const struct bl_op *op,
			     unsigned int slot, int when)
{
	const char *w = when == BL_BEFORE ? "before" : "after";
	struct bl_zsnap *zs = bl_zsnap_at(slot, when);
	struct bl_psnap *ps = bl_psnap_at(slot, when), *p;
	unsigned int i, mt, o, cpu, t;

	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *z = bl.zones[i];

		for (mt = 0; mt < MIGRATE_TYPES; mt++) {
			seq_printf(m, "zone seq=%llu when=%s nid=%d zone=%s mt=%s free=",
				   op->seq, w, zone_to_nid(z), z->name,
				   bl_mt_names[mt]);
			seq_printf(m, "%u", zs[i].free[mt][0]);
			for (o = 1; o < MAX_ORDER; o++)
				seq_printf(m, ",%u", zs[i].free[mt][o]);
			seq_putc(m, '\n');
		}
	}
	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *z = bl.zones[i];

		for (cpu = 0; cpu < nr_cpu_ids; cpu++) {
			p = &ps[cpu * bl.nr_zones + i];
			if (!p->valid)
				continue;
			seq_printf(m, "pcp seq=%llu when=%s nid=%d zone=%s cpu=%u count=%d high=%d batch=%d lists=",
				   op->seq, w, zone_to_nid(z), z->name, cpu,
				   p->count, p->high, p->batch);
			/* A value for each per-CPU list, in list order. */
			seq_printf(m, "%u", p->lists[0]);
			for (t = 1; t < BL_PCP_LISTS; t++)
				seq_printf(m, ",%u", p->lists[t]);
			if (BL_PCP_BY_ORDER) {
				seq_printf(m, " orders=%u", bl_pcp_order(0));
				for (t = 1; t < BL_PCP_LISTS; t++)
					seq_printf(m, ",%u", bl_pcp_order(t));
				seq_printf(m, " free_factor=%d", p->free_factor);
			}
			seq_printf(m, " vmstat_diff=%d stat_threshold=%d\n",
				   p->vmstat_diff, p->stat_threshold);
		}
	}
}

static int bl_log_show(struct seq_file *m, void *v)
{
	const struct bl_op *op = v;
	unsigned int slot;

	if (v == SEQ_START_TOKEN) {
		seq_printf(m, "log capacity=%u records=%u dropped=%llu\n",
			   bl.log_cap, bl.log_count, bl.log_dropped);
		return 0;
	}
	slot = op - bl.ops;
	bl_log_show_op(m, op);
	bl_log_show_snap(m, op, slot, BL_BEFORE);
	bl_log_show_snap(m, op, slot, BL_AFTER);
	return 0;
}

static const struct seq_operations bl_log_sops = {
	.start = bl_log_start,
	.next = bl_log_next,
	.stop = bl_unlock_stop,
	.show = bl_log_show,
};

DEFINE_SEQ_ATTRIBUTE(bl_log);

/* A captured image, served by seq_file; position 0 is the header. */

enum bl_kind { BL_BLOCK, BL_PCPAGE, BL_PAGEBLOCK, BL_HIGHATOMIC };

struct bl_dent {
	unsigned long pfn;	/* BL_HIGHATOMIC: the zone's reserve, in pages */
	u32 pos;
	u32 cpu;
	u16 nid;
	u8 zidx;
	u8 kind;
	u8 order;	/* BL_BLOCK, and BL_PCPAGE on 6.1 */
	u8 type;	/* migratetype, or the migratetype naming a pcp list */
};

struct bl_image {
	u64 gen;
	size_t cap;
	size_t used;
	size_t nblocks;
	size_t npcp;
	bool overflow;
	bool header;		/* position 0 is the dump line */
	struct bl_dent ent[];
};

/* The two kinds of image, and their reserved buffers' bits in bl.reserve_busy. */
enum bl_reserve { BL_RES_FREELISTS, BL_RES_PAGEBLOCKS };

/*
 * An image of at least @cap entries: the reserved buffer of @kind when
 * there is one, free and large enough (its whole capacity then), else a new
 * buffer.  A new one is kvzalloc()ed: at the end of a run under memory
 * pressure its contiguous kmalloc() part (order 7 and more for a fragmented
 * memory's freelists) can take the allocator's slow path, which reclaims
 * and compacts just before the capture; the reserved buffer allocates
 * nothing.
 */
static struct bl_image *bl_image_new(size_t cap, enum bl_reserve kind)
{
	struct bl_image *img = bl.reserve[kind];

	if (img && cap <= bl.reserve_cap[kind] &&
	    !test_and_set_bit_lock(kind, &bl.reserve_busy)) {
		memset(img, 0, sizeof(*img));
		img->cap = bl.reserve_cap[kind];
		return img;
	}
	img = kvzalloc(struct_size(img, ent, cap), BL_GFP_OWN);
	if (img)
		img->cap = cap;
	return img;
}

static void bl_image_free(struct bl_image *img)
{
	if (img == bl.reserve[BL_RES_FREELISTS])
		clear_bit_unlock(BL_RES_FREELISTS, &bl.reserve_busy);
	else if (img == bl.reserve[BL_RES_PAGEBLOCKS])
		clear_bit_unlock(BL_RES_PAGEBLOCKS, &bl.reserve_busy);
	else
		kvfree(img);
}

static struct bl_dent *bl_image_add(struct bl_image *img, struct zone *zone,
				    u8 kind, u8 type, unsigned long pfn)
{
	struct bl_dent *d;

	if (img->used == img->cap) {
		img->overflow = true;
		return NULL;
	}
	d = &img->ent[img->used++];
	d->kind = kind;
	d->type = type;
	d->pfn = pfn;
	d->nid = zone_to_nid(zone);
	d->zidx = zone_idx(zone);
	return d;
}

static void bl_capture_list(struct bl_image *img, struct zone *zone,
			    struct list_head *head, u8 kind, u8 type, u8 order,
			    u32 cpu)
{
	struct list_head *entry;
	struct page *page;
	struct bl_dent *d;
	u32 pos = 0;

	list_for_each(entry, head) {
		if (kind == BL_PCPAGE)
			page = list_entry(entry, struct page, bl_pcp_lru);
		else
			page = list_entry(entry, struct page, bl_buddy_lru);
		d = bl_image_add(img, zone, kind, type, page_to_pfn(page));
		if (!d)
			return;
		d->order = order;
		d->cpu = cpu;
		d->pos = pos++;
	}
}

static void bl_capture_zone(struct bl_image *img, struct zone *zone)
{
	unsigned int o, mt;
	size_t used = img->used;

	spin_lock(&zone->lock);
	for (o = 0; o < MAX_ORDER; o++)
		for (mt = 0; mt < MIGRATE_TYPES; mt++)
			bl_capture_list(img, zone,
					&zone->free_area[o].free_list[mt],
					BL_BLOCK, mt, o, 0);
	spin_unlock(&zone->lock);
	img->nblocks += img->used - used;
}

static void bl_capture_pcp(struct bl_image *img, struct zone *zone)
{
	struct per_cpu_pages *pcp;
	size_t used = img->used;
	unsigned int t;
	int cpu;

	for_each_online_cpu(cpu) {
		pcp = bl_pcp(zone, cpu);
		bl_pcp_lock(pcp);
		for (t = 0; t < BL_PCP_LISTS; t++)
			bl_capture_list(img, zone, &pcp->lists[t], BL_PCPAGE,
					bl_pcp_mt(t), bl_pcp_order(t), cpu);
		bl_pcp_unlock(pcp);
	}
	img->npcp += img->used - used;
}

/*
 * Under stop_machine(): every CPU spins with interrupts off while this
 * runs.  It walks every free list and per-CPU list, but stores at most
 * img->cap entries: bl_capture_list() returns at the first entry that does
 * not fit, so the walk lasts at most img->cap list steps plus one per
 * list, and img->cap is the estimate of blocks plus per-CPU pages with a
 * margin (see bl_freelists_image()).
 */
static int bl_capture(void *arg)
{
	struct bl_image *img = arg;
	unsigned int i;

	/*
	 * The HighAtomic reserve's counter, which the watermark checks take off
	 * the free pages: it can exceed the HighAtomic pageblocks (5.10 changes a
	 * pageblock's type without taking it off when a free block of a higher
	 * order spans it and is stolen whole), so the pageblock types do not tell it.
	 */
	for (i = 0; i < bl.nr_zones; i++)
		bl_image_add(img, bl.zones[i], BL_HIGHATOMIC, 0,
			     bl.zones[i]->nr_reserved_highatomic);
	for (i = 0; i < bl.nr_zones; i++)
		bl_capture_zone(img, bl.zones[i]);
	for (i = 0; i < bl.nr_zones; i++)
		bl_capture_pcp(img, bl.zones[i]);
	/* The generation this image gets once taken (bl.lock is held). */
	trace_buddylab_dump(bl.dump_gen + 1);
	return 0;
}

/* Blocks and pcp pages now, read without locks: a size estimate. */
static size_t bl_freelists_estimate(void)
{
	size_t n = 0;
	unsigned int i, o;
	int cpu;

	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *zone = bl.zones[i];

		for (o = 0; o < MAX_ORDER; o++)
			n += READ_ONCE(zone->free_area[o].nr_free);
		for_each_online_cpu(cpu)
			n += READ_ONCE(bl_pcp(zone, cpu)->count);
	}
	return n;
}

static struct bl_image *bl_freelists_image(void)
{
	size_t cap = bl_freelists_estimate();
	struct bl_image *img;
	int try, ret;

	for (try = 0; try < BL_DUMP_TRIES; try++) {
		cap += cap / 4 + 1024;
		img = bl_image_new(cap, BL_RES_FREELISTS);
		if (!img)
			return ERR_PTR(-ENOMEM);
		img->header = true;
		/*
		 * Every CPU is held with interrupts off for one bl_capture():
		 * at most cap list steps (see there).  cap is the estimated
		 * free blocks plus per-CPU pages (at most the managed pages)
		 * with a margin, and grows on each of BL_DUMP_TRIES tries.
		 */
		ret = stop_machine(bl_capture, img, NULL);
		if (!ret && !img->overflow)
			return img;
		bl_image_free(img);
		if (ret)
			return ERR_PTR(ret);
		cap *= 2;
	}
	return ERR_PTR(-EAGAIN);
}

static void bl_capture_pageblocks(struct bl_image *img, struct zone *zone)
{
	unsigned long start = zone->zone_start_pfn, end = zone_end_pfn(zone);
	unsigned long pb, pfn, flags;
	struct bl_dent *d;

	/*
	 * Interrupts stay off for one step per pageblock of the zone:
	 * spanned pages / 512 (248 in DMA32 of the 512 MiB guest).
	 */
	spin_lock_irqsave(&zone->lock, flags);
	for (pb = round_down(start, pageblock_nr_pages); pb < end;
	     pb += pageblock_nr_pages) {
		pfn = max(pb, start);
		if (!pfn_valid(pfn) || !online_section(__pfn_to_section(pfn)) ||
		    page_zone(pfn_to_page(pfn)) != zone)
			continue;
		d = bl_image_add(img, zone, BL_PAGEBLOCK, bl_pageblock_mt(pfn),
				 pb);
		if (!d)
			break;
	}
	spin_unlock_irqrestore(&zone->lock, flags);
}

/* Pageblocks of the zones, each zone's partial ones at both ends included. */
static size_t bl_pageblocks_cap(void)
{
	size_t cap = 0;
	unsigned int i;

	for (i = 0; i < bl.nr_zones; i++)
		cap += bl.zones[i]->spanned_pages / pageblock_nr_pages + 2;
	return cap;
}

static struct bl_image *bl_pageblocks_image(void)
{
	struct bl_image *img;
	unsigned int i;

	img = bl_image_new(bl_pageblocks_cap(), BL_RES_PAGEBLOCKS);
	if (!img)
		return ERR_PTR(-ENOMEM);
	for (i = 0; i < bl.nr_zones; i++)
		bl_capture_pageblocks(img, bl.zones[i]);
	return img;
}

static void *bl_image_start(struct seq_file *m, loff_t *pos)
{
	struct bl_image *img = m->private;
	loff_t i = *pos - img->header;

	if (i < 0)
		return SEQ_START_TOKEN;
	return i < img->used ? &img->ent[i] : NULL;
}

static void *bl_image_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return bl_image_start(m, pos);
}

static void bl_image_stop(struct seq_file *m, void *v)
{
}

static void bl_image_show_ent(struct seq_file *m, const struct bl_dent *d)
{
	const char *zone = bl_zone_name(d->nid, d->zidx);

	switch (d->kind) {
	case BL_BLOCK:
		seq_printf(m, "block nid=%u zone=%s order=%u mt=%s pos=%u pfn=%lu\n",
			   d->nid, zone, d->order, bl_mt_names[d->type],
			   d->pos, d->pfn);
		break;
	case BL_HIGHATOMIC:
		seq_printf(m, "highatomic nid=%u zone=%s reserved=%lu\n", d->nid,
			   zone, d->pfn);
		break;
	case BL_PCPAGE:
		seq_printf(m, "pcpage nid=%u zone=%s cpu=%u", d->nid, zone,
			   d->cpu);
		if (BL_PCP_BY_ORDER)
			seq_printf(m, " order=%u", d->order);
		seq_printf(m, " list=%s pos=%u pfn=%lu\n",
			   bl_mt_names[d->type], d->pos, d->pfn);
		break;
	default:
		seq_printf(m, "pageblock nid=%u zone=%s pfn=%lu mt=%s\n",
			   d->nid, zone, d->pfn, bl_mt_name(d->type));
	}
}

static int bl_image_show(struct seq_file *m, void *v)
{
	struct bl_image *img = m->private;

	if (v == SEQ_START_TOKEN)
		seq_printf(m, "dump gen=%llu zones=%u blocks=%zu pcp_pages=%zu\n",
			   img->gen, bl.nr_zones, img->nblocks, img->npcp);
	else
		bl_image_show_ent(m, v);
	return 0;
}

static const struct seq_operations bl_image_sops = {
	.start = bl_image_start,
	.next = bl_image_next,
	.stop = bl_image_stop,
	.show = bl_image_show,
};

/*
 * freelists and pageblocks keep their own open and release: the image is
 * taken at open (under bl.lock) and freed at release, which
 * DEFINE_SEQ_ATTRIBUTE()'s seq_open()/seq_release() pair would not do.
 */
static int bl_image_open(struct file *file, struct bl_image *(*take)(void))
{
	struct bl_image *img;
	int ret;

	mutex_lock(&bl.lock);
	img = take();
	if (!IS_ERR(img))
		img->gen = ++bl.dump_gen;
	mutex_unlock(&bl.lock);
	if (IS_ERR(img))
		return PTR_ERR(img);

	ret = seq_open(file, &bl_image_sops);
	if (ret) {
		bl_image_free(img);
		return ret;
	}
	((struct seq_file *)file->private_data)->private = img;
	return 0;
}

static int bl_freelists_open(struct inode *inode, struct file *file)
{
	return bl_image_open(file, bl_freelists_image);
}

static int bl_pageblocks_open(struct inode *inode, struct file *file)
{
	return bl_image_open(file, bl_pageblocks_image);
}

static int bl_image_release(struct inode *inode, struct file *file)
{
	bl_image_free(((struct seq_file *)file->private_data)->private);
	return seq_release(inode, file);
}

static const struct file_operations bl_freelists_fops = {
	.owner = THIS_MODULE,
	.open = bl_freelists_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = bl_image_release,
};

static const struct file_operations bl_pageblocks_fops = {
	.owner = THIS_MODULE,
	.open = bl_pageblocks_open,
	.read = seq_read,
	.llseek = seq_lseek,
	.release = bl_image_release,
};

/* zones: one line per zone, read at once */

static int bl_zones_show(struct seq_file *m, void *v)
{
	unsigned int i;

	for (i = 0; i < bl.nr_zones; i++) {
		struct zone *z = bl.zones[i];

		seq_printf(m, "zone nid=%d zone=%s start_pfn=%lu spanned=%lu present=%lu managed=%lu free_pages=%lu\n",
			   zone_to_nid(z), z->name, z->zone_start_pfn,
			   z->spanned_pages, z->present_pages,
			   zone_managed_pages(z),
			   zone_page_state_snapshot(z, NR_FREE_PAGES));
	}
	return 0;
}

DEFINE_SHOW_ATTRIBUTE(bl_zones);

/*
 * kmalloc sizes: kmalloc(), ksize() and kfree() over a range of sizes
 *
 * ksweep first=A last=B [step=S] calls, for each size A, A+S, ... <= B,
 * kmalloc(size, BL_GFP_KSWEEP), notes ksize() of the object (what the slab
 * cache, or for a large request the page allocator, reserved: the book's
 * ch8/slab4_actualsize) and kfree()s it at once, so the command holds
 * nothing afterwards.  It stops at the first size kmalloc() refuses,
 * quietly (__GFP_NOWARN), or that the watermark guard refuses.  The
 * file ksizes lists the last sweep: one line per size tried.
 */

#define BL_KSWEEP_MAX		8192		/* sizes of one sweep */
#define BL_KSWEEP_LIMIT		BIT_ULL(24)	/* largest size tried */
#define BL_GFP_KSWEEP		(GFP_KERNEL | __GFP_NOWARN | __GFP_NORETRY)

struct bl_ksize {
	u32 size;
	u32 ksize;	/* 0: kmalloc() returned NULL or the guard refused */
};

static struct bl_ksize bl_ksizes[BL_KSWEEP_MAX];
static unsigned int bl_nr_ksizes;
static u64 bl_ksizes_seq;

static int bl_ksweep_check(struct bl_cmd *cmd)
{
	u64 *v = cmd->val;

	if (!(cmd->seen & BIT_K(STEP)))
		v[BL_K_STEP] = 1;
	if (v[BL_K_FIRST] > v[BL_K_LAST] || v[BL_K_LAST] > BL_KSWEEP_LIMIT)
		return -EINVAL;
	if ((v[BL_K_LAST] - v[BL_K_FIRST]) / v[BL_K_STEP] >= BL_KSWEEP_MAX)
		return -EINVAL;
	return 0;
}

/* Whether the guard lets a kmalloc() of @size take its pages. */
static bool bl_ksweep_headroom(size_t size)
{
	if (size <= KMALLOC_MAX_CACHE_SIZE)
		return true;	/* a slab page at most; the guard's batch covers it */
	if (get_order(size) >= MAX_ORDER)
		return true;	/* the allocator refuses it without taking a page */
	return bl_headroom(BL_GFP_KSWEEP, 1UL << get_order(size), 0);
}

static int bl_exec_ksweep(struct bl_op *op, u64 first, u64 last, u64 step)
{
	u64 size;
	void *p;

	op->flags |= BL_OP_COUNT | BL_OP_STOP;
	op->stop = BL_STOP_COUNT;
	bl_nr_ksizes = 0;
	bl_ksizes_seq = op->seq;
	for (size = first; size <= last; size += step) {
		struct bl_ksize *k = &bl_ksizes[bl_nr_ksizes++];

		k->size = size;
		k->ksize = 0;
		if (!bl_ksweep_headroom(size)) {
			op->stop = BL_STOP_WATERMARK;
			return -ENOMEM;
		}
		p = kmalloc(size, BL_GFP_KSWEEP);
		if (!p) {
			op->stop = BL_STOP_NOMEM;
			return -ENOMEM;
		}
		k->ksize = ksize(p);
		kfree(p);
		op->n++;
		cond_resched();
	}
	return 0;
}

static void *bl_ksizes_start(struct seq_file *m, loff_t *pos)
{
	mutex_lock(&bl.lock);
	return *pos < bl_nr_ksizes ? &bl_ksizes[*pos] : NULL;
}

static void *bl_ksizes_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return *pos < bl_nr_ksizes ? &bl_ksizes[*pos] : NULL;
}

static int bl_ksizes_show(struct seq_file *m, void *v)
{
	const struct bl_ksize *k = v;

	seq_printf(m, "kmalloc seq=%llu size=%u ksize=%u\n", bl_ksizes_seq,
		   k->size, k->ksize);
	return 0;
}

static const struct seq_operations bl_ksizes_sops = {
	.start = bl_ksizes_start,
	.next = bl_ksizes_next,
	.stop = bl_unlock_stop,
	.show = bl_ksizes_show,
};

DEFINE_SEQ_ATTRIBUTE(bl_ksizes);

/* Load and unload */

static int bl_zones_init(void)
{
	unsigned int n = bl_collect_zones(NULL, 0);

	bl.zones = kcalloc(n, sizeof(*bl.zones), BL_GFP_OWN);
	if (!bl.zones)
		return -ENOMEM;
	/* A zone populated meanwhile by memory hotplug is left out. */
	bl.nr_zones = min(n, bl_collect_zones(bl.zones, n));
	return 0;
}

static int bl_debugfs_init(void)
{
	static const struct {
		const char *name;
		const struct file_operations *fops;
	} files[] = {
		{ "control", &bl_control_fops },
		{ "allocs", &bl_allocs_fops },
		{ "log", &bl_log_fops },
		{ "freelists", &bl_freelists_fops },
		{ "pageblocks", &bl_pageblocks_fops },
		{ "zones", &bl_zones_fops },
		{ "ksizes", &bl_ksizes_fops },
	};
	struct dentry *d;
	unsigned int i;

	bl.dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	if (IS_ERR(bl.dir))
		return PTR_ERR(bl.dir);
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		d = debugfs_create_file(files[i].name, 0600, bl.dir, NULL,
					files[i].fops);
		if (IS_ERR(d)) {
			debugfs_remove_recursive(bl.dir);
			return PTR_ERR(d);
		}
	}
	return 0;
}

/*
 * dump_reserve=1: the image buffers, vmalloc()ed here at load, while memory
 * is plentiful (order-0 pages, no contiguous block needed).  The freelists
 * one holds an entry per managed page of the zones and a quarter more, the
 * largest first request bl_freelists_image() can make: free blocks plus
 * per-CPU pages never outnumber the pages (24 bytes each against 4 KiB: 0.7%
 * of memory).  Opens while a buffer is in use (two readers) get their own.
 */
static int bl_reserve_init(void)
{
	unsigned long managed = 0;
	unsigned int i;

	if (!dump_reserve)
		return 0;
	for (i = 0; i < bl.nr_zones; i++)
		managed += zone_managed_pages(bl.zones[i]);
	bl.reserve_cap[BL_RES_FREELISTS] = managed + managed / 4 + 1024;
	bl.reserve_cap[BL_RES_PAGEBLOCKS] = bl_pageblocks_cap();
	for (i = 0; i < ARRAY_SIZE(bl.reserve); i++) {
		bl.reserve[i] = __vmalloc(struct_size(bl.reserve[i], ent,
						      bl.reserve_cap[i]),
					  BL_GFP_OWN | __GFP_ZERO);
		if (!bl.reserve[i])
			return -ENOMEM;
	}
	return 0;
}

static void bl_reserve_free(void)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(bl.reserve); i++)
		vfree(bl.reserve[i]);
}

static void bl_release_all(void)
{
	struct rb_node *n;

	while ((n = rb_first(&bl.allocs))) {
		struct bl_alloc *a = rb_entry(n, struct bl_alloc, node);

		bl_put(a);
		bl_forget(a);
		cond_resched();
	}
	bl_gc_flush();
}

static int __init bl_init(void)
{
	int ret;

	ret = bl_zones_init();
	if (ret)
		return ret;
	bl_read_boost_factor();
	ret = bl_log_alloc();
	if (ret)
		goto err_log;
	ret = bl_pool_init();
	if (ret)
		goto err_log;
	ret = bl_reserve_init();
	if (ret)
		goto err_reserve;
	bl.wq = alloc_workqueue(KBUILD_MODNAME, WQ_CPU_INTENSIVE, 1);
	if (!bl.wq) {
		ret = -ENOMEM;
		goto err_reserve;
	}
	ret = bl_debugfs_init();
	if (ret)
		goto err_wq;
	return 0;

err_wq:
	destroy_workqueue(bl.wq);
err_reserve:
	bl_reserve_free();
	kvfree(bl.pool);
err_log:
	bl_log_free();
	kfree(bl.zones);
	return ret;
}

static void __exit bl_exit(void)
{
	debugfs_remove_recursive(bl.dir);
	destroy_workqueue(bl.wq);
	bl_release_all();
	bl_reserve_free();
	kvfree(bl.pool);
	bl_log_free();
	kfree(bl.zones);
}

module_init(bl_init);
module_exit(bl_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Drive the page allocator and record its free lists");
