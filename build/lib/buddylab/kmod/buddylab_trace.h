/* SPDX-License-Identifier: GPL-2.0 */
/*
 * buddylab's own trace events: where the module's exact dumps and its
 * before/after snapshots fall among the kernel's kmem events, so that a
 * trace can be cut exactly at them.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM buddylab

#if !defined(_BUDDYLAB_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _BUDDYLAB_TRACE_H

#include <linux/tracepoint.h>

/* Emitted inside the stop_machine() callback that captures a dump. */
TRACE_EVENT(buddylab_dump,
	    TP_PROTO(u64 gen),
	    TP_ARGS(gen),
	    TP_STRUCT__entry(__field(u64, gen)),
	    TP_fast_assign(__entry->gen = gen;),
	    TP_printk("gen=%llu", __entry->gen)
);

/* Emitted as an operation's before (after=0) or after (after=1) snapshot is taken. */
TRACE_EVENT(buddylab_snapshot,
	    TP_PROTO(u64 seq, int after),
	    TP_ARGS(seq, after),
	    TP_STRUCT__entry(__field(u64, seq) __field(int, after)),
	    TP_fast_assign(__entry->seq = seq; __entry->after = after;),
	    TP_printk("seq=%llu after=%d", __entry->seq, __entry->after)
);

#endif /* _BUDDYLAB_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE buddylab_trace
#include <trace/define_trace.h>
