#!/usr/bin/env python3
"""Prints the names a man page documents (its NAME section's .Nm lines),
one per line, except the page's own name: each gets a link page."""
import pathlib
import sys

page = pathlib.Path(sys.argv[1])
names, in_name = [], False
for line in page.read_text().splitlines():
    if line.startswith(".Sh "):
        in_name = line == ".Sh NAME"
    elif in_name and line.startswith(".Nm "):
        name = line.split()[1].rstrip(",")
        if name != page.stem and name not in names:
            names.append(name)
print("\n".join(names))
