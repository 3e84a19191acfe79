"""The console's screens: fleet (home), node, logs, admin, help and dialogs."""
