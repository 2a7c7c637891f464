"""Command-line interface: wires the pipeline stages together; no registration logic lives here."""
