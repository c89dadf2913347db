"""Fusion methods: one module per method (the published networks and the project's own)."""
