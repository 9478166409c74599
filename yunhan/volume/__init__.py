"""Volumes: block devices served by a storage process (`cdpd`) on their host, with a write
journal for continuous data protection. `journal`: the journal format, its scan and the
index of a volume at any time; `cdpd`: build, start and stop the storage process."""
