"""The head-end's side of the broker: a paho client configured from settings, the embedded broker."""
