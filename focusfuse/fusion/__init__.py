"""Inference: the N-slice strategies and ``fuse_stack``, the library call behind ``focusfuse stack``."""
