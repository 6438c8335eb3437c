"""Recovering what dead or frozen workers left: the sweeper, the dead-letter store, silence alerts."""
