"""The on-site commissioning test of a controlled switch: its steps as relay commands, refusals, approval, result."""
