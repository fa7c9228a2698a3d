"""Helpers every stage shares: storage (local or s3://), video I/O and the one list of video
extensions, flags from dataclasses, the sample videos, section timers, environment plumbing."""
