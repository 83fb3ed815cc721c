"""Ready-made connections from training frameworks to the monitor."""
