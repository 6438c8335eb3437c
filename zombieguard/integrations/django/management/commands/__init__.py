"""``manage.py zombieguard``."""
