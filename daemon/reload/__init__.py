"""Live reconfiguration: read config.toml again and apply the difference without a restart."""
