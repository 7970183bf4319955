"""Test helpers: services, stacks of real processes, polling with a deadline."""
