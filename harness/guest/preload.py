"""A guest that has the module loaded and the steps' tracing set up before its quiet point.

`qemu-test` boots its guest with FLAG on the kernel command line; /init
(images/init.sh) then runs the image's PRELOAD_FILE, `script()`, before
bl-resume waits for the kernel to be quiet.  A snapshot of that guest holds
the loaded module and the trace buffer, so a restored run skips what cost it
most of its experiment's guest time: under TCG, loading the module (the
kernel's module loader, translated anew after every restore) and allocating
the 16 MiB trace buffer.  The flag is on the command line, so such a guest
has a snapshot key of its own (buddylab.guest.snapshot), and the image holds
the module build, so the key names that too; its start state is read after
the preload like any other.

The steps' script (buddylab.experiments.steps) loads the module only if it
is not loaded (`load_module`), and sets up the same tracing, which then
changes nothing: the buffer has its size and the events are on.  It
unloads the module at its end, as before, so a second attempt in the same
guest loads it again.  Every other command loads the module itself (plain
`insmod`), in guests without the flag.
"""

from __future__ import annotations

from buddylab import protocol

FLAG = "bl_preload"
PRELOAD_FILE = "etc/buddylab-preload"          # in the image; /init runs it with FLAG

# The tracing of the steps' script: the kmem page events and the module's own.
STEP_EVENTS = (*(f"kmem/{e}" for e in protocol.KMEM_EVENTS), *protocol.TRACE_EVENTS)
STEP_BUFFER_KB = 16384


def load_module(params: str = "") -> str:
    """Shell text: the module loaded with `params`; one that /init preloaded (no
    parameters) is taken as it is."""
    if params:
        return protocol.insmod(params)
    return f"{{ [ -d /sys/module/{protocol.MODULE_NAME} ] || {protocol.insmod()}; }}"


def script() -> str:
    """What /init runs with FLAG: the module loaded, the steps' tracing set up, tracing off."""
    return (f"{protocol.insmod()} && {protocol.tracing_setup(STEP_EVENTS, STEP_BUFFER_KB)}\n")
