"""`make bench` and `make bench-compare`: see the README, section "Performance"."""
