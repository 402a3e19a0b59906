"""MQTT collection: decode, validate, write in batches, acknowledge after commit."""
