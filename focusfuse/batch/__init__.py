"""``focusfuse batch``: every z-stack under acquisition folders, fused once, safely, by one or many workers."""
