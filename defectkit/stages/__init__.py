"""Pipeline stages, one module each; importing this package registers them in STAGES."""
