"""The loop: APScheduler wiring and the tick probe -> judge -> save -> act."""
