"""Pydantic models that cross a process or container boundary.

This package depends on the standard library and pydantic only, so the agent
runtime inside a container can import it without pulling in the host. Import
from the submodules: `legion.wire.api`, `legion.wire.events`, `legion.wire.errors`, and
`legion.wire.rules` (the input rules, shared by the server and the schema) with
`legion.wire.fields` (the field types that apply them).
"""
