"""Reconcilers (pure) and the controller loop that runs them on every store change."""

from yunhan.controller.loop import Controller, reconcile
from yunhan.controller.netcompile import compile_hosts

__all__ = ["Controller", "compile_hosts", "reconcile"]
