"""The engine every algorithm shares: inputs, targets, batching, hooks, base classes."""
