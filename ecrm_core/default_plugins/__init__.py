"""The core's own features, written as plugins and registered like any other.

They prove the hooks by using them; a host can switch one off with
``CRM(disable=["core.kinds"])`` and register its own instead.
"""
