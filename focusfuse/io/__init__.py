"""Images in and out: stack reading, atomic output writing, the gray and dtype policy."""
