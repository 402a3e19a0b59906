"""Who may do what on the broker: device credentials, service accounts, the generated Mosquitto configuration."""
