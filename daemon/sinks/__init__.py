"""Where results go on the device: metrics, console progress, MQTT and Home Assistant, the page's history."""
