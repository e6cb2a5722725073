"""Placement: host states → filters → weighers → claims. It never does I/O beyond the DB."""
