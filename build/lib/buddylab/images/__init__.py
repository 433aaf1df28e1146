"""Kernel recipes and guest files, shipped as package data of buddylab (see buddylab.paths)."""
