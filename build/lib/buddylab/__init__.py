"""buddylab: run the Linux 5.x page allocator for real and compare it with a model."""
