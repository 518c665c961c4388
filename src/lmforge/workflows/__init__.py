"""End-to-end jobs built from the lower layers."""
