"""The faces service's function code (deployed as a directory; handler `main.handler`)."""
