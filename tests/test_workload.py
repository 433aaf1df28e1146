"""The generated workloads: what each chunk of the pressure workload leaves at its end."""

from __future__ import annotations

from buddylab.experiments.accuracy.workload import command_args, generate


def test_each_pressure_chunk_ends_by_freeing_every_id_given_so_far():
    """Only a block the module got takes an id: after a refusal the guest's ids lag behind
    the generator's, so a chunk's last frees must start at id 1 and reach the last id the
    generator gave, or blocks the guest holds stay held into the next chunk."""
    chunk = 60
    commands = generate(11, 600, "pressure", 512, chunk)
    given = 0
    peak = 0
    asked = 0
    for i, command in enumerate(commands):
        verb, args = command.split()[0], command_args(command)
        if verb == "alloc":
            n = int(args.get("count", 1))
            given += n
            asked += n << int(args.get("order", 0)) if "size" not in args else n
            peak = max(peak, asked)
        if i % chunk == chunk - 1:
            assert command == f"free_ids first=1 last={given}", (i, command)
            asked = 0
    # In between, a chunk asks for more than a 512 MiB guest has free once the run is set
    # up (about 100,000 pages: 402 MB of MemFree after the module and 48 MiB of trace).
    assert peak > 110_000, peak


def test_the_same_seed_gives_the_same_commands():
    assert generate(3, 120, "pressure", 512, 60) == generate(3, 120, "pressure", 512, 60)
    assert generate(3, 120, "pressure", 512, 60) != generate(4, 120, "pressure", 512, 60)
