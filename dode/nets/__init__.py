"""Networks shipped with dode (the embedded digits models)."""
