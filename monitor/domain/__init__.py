"""The pure core: no I/O, no clock reads, no logging. `now` is always a parameter."""
