"""The decode engine: sampling, stopping, continuous batching, running a plan."""
