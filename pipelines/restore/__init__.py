"""Restoration: restorers (bicubic, the few-step diffusion student), tiling, one video as a
stream of frames, the manifest of an archive, and the archive job on Ray Data actors."""
