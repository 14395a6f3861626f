"""Third-party reference code the tests compare the engine against (each with its licence)."""
