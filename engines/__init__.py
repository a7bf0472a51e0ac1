"""Inference backends behind one small protocol (see engines.base)."""
