"""Disk image formats: what an upload's content is, and whether it is safe."""
