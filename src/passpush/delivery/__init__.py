"""Delivery: the worker, and Apple's and Google's deliverers beside each other (apple/, google/)."""
