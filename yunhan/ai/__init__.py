"""AI services (Wenqu): built-in functions that run models shipped by pip and Debian
packages (issue 11, item 5). `catalog` says what each service is; `services/<name>/` is
its function code, deployed and run like any user's function. Nothing here imports a
model library: only the workers do.
"""

from yunhan.ai.catalog import SERVICES, ServiceDef, event_from_file, event_from_upload, service

__all__ = ["SERVICES", "ServiceDef", "event_from_file", "event_from_upload", "service"]
