"""XenStore client on pyxs and the xenbus split-driver wiring (console, vbd, vif)."""
