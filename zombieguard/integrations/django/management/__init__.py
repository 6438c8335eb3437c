"""Management commands of zombieguard's Django app."""
