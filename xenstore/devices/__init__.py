"""Split-driver node sets and hotplug: console, vbd, vif, and the xenbus state machine."""
