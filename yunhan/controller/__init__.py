"""Reconcilers (pure), the document engine, and the controller loop."""

from yunhan.controller.loop import Controller
from yunhan.controller.netcompile import compile_hosts

__all__ = ["Controller", "compile_hosts"]
