"""Optim: feature visualization by input optimization, built on the shared hook machinery."""
