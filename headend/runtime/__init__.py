"""What every long-running process shares: stopping on signals, logging, periodic status lines."""
