"""Edge alerts: conditions evaluated on the device, raised and resolved with hysteresis."""
