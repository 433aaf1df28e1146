// SPDX-License-Identifier: GPL-2.0
/*
 * slab_oob: the chapter's buggy slab module.  At load it kmalloc()s an
 * object of `size` bytes and writes one byte just past its end: a
 * slab-out-of-bounds write that KASAN reports (mm/kasan/report.c) on a
 * kernel built with CONFIG_KASAN.  Without KASAN the write silently lands
 * in the slab's slack or the next object; buddylab never loads it there.
 */
#include <linux/module.h>
#include <linux/slab.h>

static unsigned int size = 100;
module_param(size, uint, 0444);
MODULE_PARM_DESC(size, "bytes to kmalloc; the byte at offset size is written (default 100)");

static int __init slab_oob_init(void)
{
	char *p = kmalloc(size, GFP_KERNEL);

	if (!p)
		return -ENOMEM;
	pr_info("slab_oob: kmalloc(%u) = %px, writing p[%u]\n", size, p, size);
	/* The bug: one byte past the object (OPTIMIZER_HIDE_VAR keeps the compiler from
	 * proving it out of bounds and dropping or diagnosing the store).
	 */
	OPTIMIZER_HIDE_VAR(p);
	p[size] = 'x';
	kfree(p);
	return 0;
}

static void __exit slab_oob_exit(void)
{
}

module_init(slab_oob_init);
module_exit(slab_oob_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("buddylab: an out-of-bounds write on a kmalloc'd object, for KASAN");
