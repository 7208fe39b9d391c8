"""What integrators see of the log: the public event contract, the live stream and its limits."""
