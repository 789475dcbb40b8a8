"""Where weights come from: step specs, model names, checkpoint sources."""
