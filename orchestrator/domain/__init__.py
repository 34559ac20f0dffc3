"""The pure core: no I/O, no clock, no database, no HTTP. Everything here is a function of its
arguments (time and randomness included), so it is tested without any of them."""
