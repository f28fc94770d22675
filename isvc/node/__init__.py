"""One machine: the ``isvc up`` process, which composes the gateway and the control plane's controller."""
