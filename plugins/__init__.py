"""objkit's built-in plugins (import name ``objkit_plugins``), registered through the
``objkit`` entry-point group exactly like third-party plugins."""
