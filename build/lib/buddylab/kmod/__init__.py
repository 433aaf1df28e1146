"""The kernel module's sources, shipped as package data of buddylab (see buddylab.paths)."""
