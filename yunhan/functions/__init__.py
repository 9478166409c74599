"""Serverless functions on one host: a zygote that forks sandboxed workers (issue 11).

The public face: `FunctionRuntime` (runtime.py) and the plain data it takes and returns.
"""

from yunhan.errors import FunctionRuntimeError, WorkerGone
from yunhan.functions.runtime import (
    Deployment,
    FunctionRuntime,
    Invocation,
    Worker,
    WorkerExit,
)
from yunhan.functions.spec import FunctionSpec, UidRange

__all__ = [
    "Deployment",
    "FunctionRuntime",
    "FunctionRuntimeError",
    "FunctionSpec",
    "Invocation",
    "UidRange",
    "Worker",
    "WorkerExit",
    "WorkerGone",
]
