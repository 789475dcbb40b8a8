"""What the user asked for: option parts and their CLI metadata, the scoring protocol, and the
checks of a request before anything is downloaded or written (output paths, preflight against the model)."""
